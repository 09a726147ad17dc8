"""The `bptt` command through typer's CliRunner: help, version, one-line errors, download, a tiny run."""

from __future__ import annotations

import functools
import hashlib
import json
import signal
import subprocess
import sys
import time
import typing

import pytest
import typer

from bpttcli import __version__, checkpoint
from bpttcli.cli import app
from bpttcli.data import min_corpus_length
from bpttcli.download import DEFAULT_SHA1
from bpttcli.fsutil import sha1_of


def leaf_commands(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command, e.g. ('train',) or ('demo', 'influence-balancing')."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [path]
    return [leaf for name, sub in sorted(subcommands.items()) for leaf in leaf_commands(sub, path + (name,))]


ROOT = typer.main.get_command(app)
WORLD = "Ünïcödé 東京 🚀 line one\nCRLF line\r\n" * 8


@pytest.fixture
def cli_error(bptt_error):
    """These errors come before any work: the error line is the whole output."""
    return functools.partial(bptt_error, alone=True)


@pytest.fixture
def data_error(cli_error, tmp_path):
    """`bptt train --data PATH ARGS` must fail with exit 3, one line, and no run directory left behind."""

    def run(path, *args) -> str:
        line = cli_error("train", "--data", path, "-q", *args, code=3)
        assert not (tmp_path / "runs").exists()
        return line

    return run


def test_help_lists_commands(bptt):
    out = bptt("--help").output
    assert {"download", "train"} <= set(ROOT.commands) and all(name in out for name in ROOT.commands)


def test_version(bptt):
    assert bptt("--version").output.strip() == f"bptt {__version__}"


@pytest.mark.parametrize("command", leaf_commands(ROOT), ids=" ".join)
def test_every_command_help_has_an_example(bptt, command):
    assert "Example" in bptt(*command, "--help").output


def test_data_missing(data_error, tmp_path):
    assert "not a file" in data_error(tmp_path / "missing.txt")


def test_data_directory(data_error, tmp_path):
    assert "not a file" in data_error(tmp_path)


def test_data_not_utf8(data_error, tiny_corpus):
    assert "not UTF-8" in data_error(tiny_corpus("café crème ".encode("latin-1") * 200))


def test_data_empty(data_error, tiny_corpus):
    assert "empty" in data_error(tiny_corpus(""))


@pytest.mark.parametrize("batch, steps, fraction", [(2, 5, 0.1), (3, 4, 0.2), (32, 35, 0.1)])
def test_data_too_short_names_the_minimum(data_error, tiny_corpus, batch, steps, fraction):
    need = min_corpus_length(batch, steps, fraction)
    path = tiny_corpus((WORLD * 20)[: need - 1])
    line = data_error(path, "--preprocess", "raw", "-b", batch, "-t", steps, "--val-fraction", fraction)
    assert f"at least {need};" in line and f"has {need - 1} characters" in line


@pytest.mark.parametrize(
    "args, named",
    [(["--set", "foo.bar=1"], "foo.bar"), (["--set", "optim.lr=abc"], "optim.lr"),
     (["--set", "model.cell=transformer"], "model.cell"), (["--lr", "-1"], "optim.lr"),
     (["--set", "data.val_fraction=1.5"], "data.val_fraction")],
)
def test_bad_set_or_flag_is_one_line(cli_error, args, named):
    assert named in cli_error("train", *args, code=2)


@pytest.mark.parametrize(
    "content, named", [("model:\n  hiden: 3\n", "model.hiden"), ("data:\n  batch_size: -1\n", "data.batch_size"),
                       ("optim: {lr: fast}\n", "optim.lr")],
)
def test_bad_config_file_is_one_line(cli_error, tmp_path, content, named):
    (tmp_path / "bad.yaml").write_text(content)
    assert named in cli_error("train", "--config", tmp_path / "bad.yaml", code=2)


def test_download_the_book_verifies_and_caches(bptt, http_server, book, tmp_path):
    http_server.routes["/timemachine.txt"] = [("ok", book.read_bytes())]
    args = ("download", "--url", http_server.url("/timemachine.txt"), "--data-dir", tmp_path / "cache", "-q")
    assert "verified" in bptt(*args).output
    assert sha1_of(tmp_path / "cache" / "timemachine.txt") == DEFAULT_SHA1
    bptt(*args)
    assert http_server.hits == ["/timemachine.txt"]  # the second call made no request


def test_download_with_custom_checksum_caches(bptt, http_server, tmp_path):
    body = b"a small corpus\n" * 100
    http_server.routes["/c.txt"] = [("ok", body)]
    args = ("download", "--url", http_server.url("/c.txt"), "--sha1", hashlib.sha1(body).hexdigest(), "-q")
    bptt(*args)
    bptt(*args)
    assert (tmp_path / "data" / "c.txt").read_bytes() == body and len(http_server.hits) == 1


def test_download_checksum_mismatch(cli_error, http_server, tmp_path):
    http_server.routes["/timemachine.txt"] = [("ok", b"not the book")]
    line = cli_error("download", "--url", http_server.url("/timemachine.txt"), "--data-dir", tmp_path / "c", "-q",
                      code=4)
    assert "checksum mismatch" in line and DEFAULT_SHA1 in line
    assert list((tmp_path / "c").iterdir()) == []


def test_tiny_corpus_end_to_end(bptt, tiny_corpus, tmp_path):
    path = tiny_corpus(WORLD)
    run = tmp_path / "run"
    bptt("train", "--data", path, "--preprocess", "raw", "--batch-size", 2, "--num-steps", 5, "--hidden", 16,
         "--epochs", 1, "--run-dir", run, "-q")
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "eval"}
    assert set(checkpoint.load(run / "last.pt")["vocab"]) == set(WORLD)  # raw keeps every character


def _config_keys(cls=None, prefix="") -> set[str]:
    import dataclasses

    from bpttcli.config import Config

    keys = set()
    for f in dataclasses.fields(cls or Config):
        kind = typing.get_type_hints(cls or Config)[f.name]
        keys |= _config_keys(kind, f"{prefix}{f.name}.") if dataclasses.is_dataclass(kind) else {prefix + f.name}
    return keys


def test_every_option_maps_to_a_real_config_key_and_a_real_parameter():
    import inspect

    from bpttcli import cli, compare

    tables = ((cli.train, cli.TRAIN_KEYS), (cli.analyze, cli.ANALYZE_KEYS), (cli.compare, compare.OPTION_KEYS),
              (cli.prepare, cli.PREPARE_KEYS))
    for command, keys in tables:
        assert set(keys.values()) <= _config_keys(), set(keys.values()) - _config_keys()
        assert set(keys) <= set(inspect.signature(command).parameters)


# ------------------------------------------------------------------ help at 80 columns, start-up
def help_at_80(cli_runner, command: tuple[str, ...]) -> str:
    result = cli_runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def shown_options(command: tuple[str, ...]):
    """The click parameters of `command` and the context their help is shown in."""
    cmd = functools.reduce(lambda group, name: group.commands[name], command, ROOT)
    ctx = cmd.context_class(cmd, info_name=command[-1] if command else "bptt")
    return [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)], ctx


@pytest.mark.parametrize("command", [(), ("demo",)] + leaf_commands(ROOT), ids=lambda c: " ".join(c) or "bptt")
def test_help_fits_80_columns_without_cut_text_or_split_metavars(cli_runner, command):
    from rich.text import Text

    out = help_at_80(cli_runner, command)
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in out
    tokens = set(out.replace("│", " ").split())
    params, ctx = shown_options(command)
    for param in params:
        metavar = param.metavar if param.metavar is not None else param.display_type_rich(ctx)
        if getattr(param, "is_flag", False):
            assert metavar == "", param.name  # a flag takes no value: no <bool>
        else:
            assert metavar in out and any(metavar in line for line in lines), (param.name, metavar)
        for word in Text.from_markup(param.help or "").plain.split():  # every word whole: nothing folded or cut
            assert word in tokens, (param.name, word)
    assert "<bool>" not in out and "<list[" not in out


def test_train_help_groups_options_in_panels_with_the_config_defaults(cli_runner):
    from bpttcli.config import Config

    out = help_at_80(cli_runner, ("train",))
    panels = [line.split("─")[1].strip() for line in out.splitlines() if line.startswith("╭─")]
    assert panels == ["Options", "Data", "Model", "Strategy", "Optimiser", "Run"]
    defaults = Config()
    text = " ".join(out.replace("│", " ").split())
    for shown in (f"Hidden units per layer. [default: {defaults.model.hidden}]",
                  f"[default: {defaults.strategy.name.value}]", f"[default: {defaults.strategy.tau}]",
                  f"[default: {defaults.optim.optimizer.value}]", f"[default: {defaults.train.eval_every}]"):
        assert shown in text


def test_shell_completion_is_on(bptt):
    out = bptt("--help").output
    assert "--install-completion" in out and "--show-completion" in out


def test_help_does_not_import_torch_and_python_m_works():
    probe = ("import sys; from bpttcli.cli import main; sys.argv = ['bptt', '--help'];\n"
             "try: main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stderr
    version = subprocess.run([sys.executable, "-m", "bpttcli", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"bptt {__version__}"


def test_error_messages_keep_square_brackets(cli_error, tmp_path):
    """A message is printed as text, not rich markup: '[1]' in a path stays (it used to vanish)."""
    assert f"corpus {tmp_path / 'book[1].txt'} is not a file" in cli_error("train", "--data", tmp_path / "book[1].txt",
                                                                           "-q", code=3)


# ------------------------------------------------------------------ stop signals outside training
def test_ctrl_c_while_torch_is_importing_exits_130_silently(tmp_path):
    """-X importtime reports each module as it finishes: the first torch module means torch is importing."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "bpttcli", "train", "--data", "missing.txt"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = []
    for line in proc.stderr:
        if line.startswith("import time:"):
            if line.rsplit("|", 1)[-1].strip().startswith("torch"):
                proc.send_signal(signal.SIGINT)
                break
        else:
            other.append(line)
    else:
        pytest.fail("torch was never imported")
    _, rest = proc.communicate(timeout=60)
    other += [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 130
    assert "".join(other).strip() == ""  # no traceback, no message


def test_sigterm_during_a_download_exits_143_and_leaves_no_temp_file(http_server, tmp_path):
    http_server.routes["/book.txt"] = [("trickle", (100, 0.05, b"x" * 100_000))]
    proc = subprocess.Popen([sys.executable, "-m", "bpttcli", "download", "--url", http_server.url("/book.txt"),
                             "--sha1", "", "--data-dir", str(tmp_path), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".book.txt.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == []  # the temp file and the lock went with the unwinding
