"""Bad input, command by command: each case exits with its code and one line on stderr naming the problem, with no
traceback, nothing on stdout, and no new or changed file.

Every case runs in one prepared directory (`world`: corpora, a trained run, damaged checkpoints and configs, a
finished comparison) that is fingerprinted before and after. Add a case whenever a command gains an option.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import sys
import time

import pytest

from bpttcli import checkpoint, tokencache
from bpttcli.compare import compare, compare_config
from bpttcli.config import load_config
from bpttcli.corpus import Preprocess
from bpttcli.train import train

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 10
TINY = {"model.hidden": 8, "data.batch_size": 2, "strategy.tau": 5, "train.log_every": 2, "train.eval_every": 3,
        "train.max_steps": 6, "train.device": "cpu"}
SETS = ["model.hidden=8", "data.batch_size=2", "strategy.tau=5", "train.device=cpu"]
COMPARE = ["--strategies", "truncated", "--seeds", "0", "--no-gradient-quality",
           *(arg for s in SETS for arg in ("--set", s))]
BIG = str(2**63)


def alias_bomb(levels: int = 7) -> str:
    lines = ["data:", "  path:", "    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    return "\n".join(lines + [f"    - &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A directory holding every file the cases point at."""
    root = tmp_path_factory.mktemp("world")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    (root / "reversed.txt").write_text(TEXT[::-1], encoding="utf-8")  # same vocabulary, another text
    (root / "latin1.txt").write_bytes("café crème ".encode("latin-1") * 100)
    (root / "empty.txt").write_text("")
    (root / "dldir").mkdir()
    train(load_config(None, {**TINY, "data.path": str(root / "corpus.txt")}), root / "run", quiet=True)
    damaged = shutil.copytree(root / "run", root / "badmetrics-run")
    (damaged / "metrics.jsonl").write_bytes((damaged / "metrics.jsonl").read_bytes().replace(b"train", b"tr\xffin", 1))
    payload = checkpoint.load(root / "run" / "best.pt")
    checkpoint.save({**payload, "vocab": list(range(len(payload["vocab"])))}, root / "ints-vocab.pt")
    checkpoint.save({**payload, "config": {**payload["config"], "model": {"hidden": -4}}}, root / "bad-config.pt")
    (root / "truncated.pt").write_bytes((root / "run" / "best.pt").read_bytes()[:300])
    with open(root / "raw.pt", "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT, "vocab": ["a"]}, f, protocol=4)
    configs = {"bomb.yaml": alias_bomb(), "deep.yaml": "[" * 1000, "train5.yaml": "train: 5\n",
               "long.yaml": f"model:\n  cell: {'x' * 5000}\n", "nul.yaml": 'data:\n  path: "a\\0b"\n',
               "recursive.yaml": "data: &a {path: *a}\n"}
    for name, text in configs.items():
        (root / name).write_text(text, encoding="utf-8")
    compare(compare_config(None, root / "corpus.txt", 300, None, SETS), ["truncated"], [0], root / "cmp",
            gradients=False)
    summary = shutil.copytree(root / "cmp", root / "cmp-damaged") / "runs" / "truncated-s0" / "summary.json"
    summary.write_bytes(summary.read_bytes()[:100])
    # The valid corpora prepared (and indexed, once older than the index's racy window) in the cases' cache:
    # a case's refusal must not depend on whether it came first to a corpus.
    time.sleep(max(0.0, tokencache.RACY_SECONDS + 0.1 - (time.time() - (root / "reversed.txt").stat().st_ctime)))
    for name in ("corpus.txt", "reversed.txt"):
        tokencache.load(root / name, Preprocess.letters, root / "dldir", quiet=True)
    return root


def fingerprint(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


T = ["train", "--data", "corpus.txt", "--hidden", "8", "-b", "2", "-t", "5", "--device", "cpu", "-q"]
CASES = {  # id: (arguments, exit code, what the line says)
    # train
    "train-lr-nan": (T + ["--lr", "nan"], 2, "optim.lr: expected a finite number"),
    "train-lr-inf": (T + ["--lr", "inf"], 2, "optim.lr: expected a finite number"),
    "train-lr-negative": (T + ["--lr", "-1"], 2, "optim.lr must be > 0"),
    "train-max-time-negative": (T + ["--max-time", "-1"], 2, "train.max_time must be >= 0"),
    "train-seed-2^63": (T + ["--seed", BIG], 2, "train.seed must be an integer in [0, 2^63)"),
    "train-seed-negative": (T + ["--seed", "-1"], 2, "train.seed must be an integer in [0, 2^63)"),
    "train-hidden-huge": (T + ["--hidden", "1000000"], 2, "model.hidden=1000000 with model.layers=1 needs ~"),
    "train-activations-huge": (T + ["-b", "100000000", "-t", "100000000"], 2, "lower data.batch_size, strategy.tau"),
    "train-checkpoint-every-negative": (T + ["--set", "train.checkpoint_every=-1"], 2, "train.checkpoint_every"),
    "train-val-fraction-1": (T + ["--val-fraction", "1"], 2, "data.val_fraction must be in [0, 1)"),
    "train-dropout-1": (T + ["--dropout", "1"], 2, "model.dropout must be in [0, 1)"),
    "train-batch-not-an-int": (T + ["--batch-size", "1e30"], 2, "Invalid value for '--batch-size'"),
    "train-alias-bomb": (["train", "--config", "bomb.yaml"], 2, "expands to more than 10,000 values"),
    "train-recursive-yaml": (["train", "--config", "recursive.yaml"], 2, "expands to more than 10,000 values"),
    "train-deep-yaml": (["train", "--config", "deep.yaml"], 2, "is nested too deeply"),
    "train-long-value": (["train", "--config", "long.yaml"], 2, "model.cell: 'xxxx"),
    "train-section-not-a-mapping": (["train", "--config", "train5.yaml", "--max-steps", "3"], 2,
                                    "train: expected a mapping of keys, got 5"),
    "train-nul-in-path": (["train", "--config", "nul.yaml"], 2, "data.path must be a file path"),
    "train-bad-sha1": (T + ["--set", "data.sha1=xyz"], 2, "data.sha1 must be 40 hexadecimal digits"),
    "train-unknown-key": (T + ["--set", "optim.momentum=0.9"], 2, "unknown config key 'optim.momentum'"),
    "train-data-missing": (["train", "--data", "missing.txt", "-q"], 3, "not a file"),
    "train-data-not-utf8": (["train", "--data", "latin1.txt", "-q"], 3, "not UTF-8"),
    "train-data-empty": (["train", "--data", "empty.txt", "-q"], 3, "is empty"),
    "train-data-unreadable": (["train", "--data", "/proc/self/mem", "-q"], 3, "make it readable or pass another"),
    "train-config-unreadable-data": (["train", "--set", "data.path=/proc/self/mem", "-q"], 3,
                                     "make it readable or pass another"),
    "train-existing-run": (T + ["--run-dir", "run"], 2, "already holds a run; continue it with --resume run"),
    "train-resume-missing": (["train", "--resume", "nowhere"], 5, "has no last.pt to resume from"),
    "train-resume-with-run-dir": (["train", "--resume", "run", "--run-dir", "x"], 2, "drop --config/--run-dir"),
    "train-resume-other-model": (["train", "--resume", "run", "--hidden", "32", "-q"], 5, "model.hidden is 8"),
    "train-resume-other-text": (["train", "--resume", "run", "--data", "reversed.txt", "-q"], 5,
                                "is not the text this run trained on"),
    "train-resume-damaged-metrics": (["train", "--resume", "badmetrics-run", "--max-steps", "9", "-q"], 5,
                                     "metrics.jsonl line 1 is damaged"),
    "train-resume-seed-negative": (["train", "--resume", "run", "--set", "train.seed=-1"], 2, "train.seed must be"),
    # sample
    "sample-temperature-nan": (["sample", "run", "--temperature", "nan"], 2, "--temperature must be a number in"),
    "sample-temperature-inf": (["sample", "run", "--temperature", "inf"], 2, "--temperature must be a number in"),
    "sample-temperature-1e308": (["sample", "run", "--temperature", "1e308"], 2, "--temperature must be a number"),
    "sample-temperature-zero": (["sample", "run", "--temperature", "0"], 2, "--temperature must be a number in"),
    "sample-seed-2^63": (["sample", "run", "--seed", BIG], 2, "--seed must be an integer in [0, 2^63)"),
    "sample-top-k-negative": (["sample", "run", "--top-k", "-1"], 2, "--top-k must be >= 0"),
    "sample-length-negative": (["sample", "run", "--length", "-1"], 2, "--length must be >= 0"),
    "sample-vocab-of-ints": (["sample", "ints-vocab.pt"], 5, "ints-vocab.pt has a damaged vocabulary"),
    "sample-invalid-stored-config": (["sample", "bad-config.pt"], 5, "bad-config.pt does not hold a bptt model"),
    "sample-raw-pickle": (["sample", "raw.pt"], 5, "raw.pt is corrupted or truncated"),
    "sample-truncated-checkpoint": (["sample", "truncated.pt"], 5, "truncated.pt is corrupted or truncated"),
    "sample-missing-checkpoint": (["sample", "nothing.pt"], 5, "no checkpoint at nothing.pt"),
    # compare
    "compare-seed-2^63": (["compare", "--data", "corpus.txt", "--seeds", BIG], 2, "--seeds"),
    "compare-seeds-not-integers": (["compare", "--data", "corpus.txt", "--seeds", "0,x"], 2, "--seeds '0,x'"),
    "compare-lr-nan": (["compare", "--data", "corpus.txt", "--set", "optim.lr=.nan"], 2, "optim.lr"),
    "compare-max-time-inf": (["compare", "--data", "corpus.txt", "--max-time", "inf"], 2, "train.max_time"),
    "compare-budget-negative": (["compare", "--data", "corpus.txt", "--budget-tokens", "-5"], 2, "train.max_tokens"),
    "compare-unknown-strategy": (["compare", "--data", "corpus.txt", "--strategies", "bogus"], 2, "unknown strategy"),
    "compare-rerun-other-config": (["compare", "--data", "corpus.txt", "--budget-tokens", "400", "--out", "cmp",
                                    *COMPARE], 2, "was trained with another config"),
    "compare-damaged-summary": (["compare", "--data", "corpus.txt", "--budget-tokens", "300", "--out", "cmp-damaged",
                                 *COMPARE], 5, "summary.json is damaged (JSONDecodeError)"),
    # analyze
    "analyze-theory-horizon-negative": (["analyze", "--theory", "--horizon", "-5"], 2, "--horizon, --windows"),
    "analyze-theory-horizon-huge": (["analyze", "--theory", "--horizon", "20000"], 2, "--horizon must be at most"),
    "analyze-theory-seed-2^63": (["analyze", "--theory", "--seed", BIG], 2, "--seed must be an integer"),
    "analyze-init-seed-negative": (["analyze", "--init", "--seed", "-1", "--data", "corpus.txt"], 2, "--seed must"),
    "analyze-init-hidden-huge": (["analyze", "--init", "--hidden", "1000000", "--data", "corpus.txt"], 2,
                                 "model.hidden=1000000"),
    "analyze-nothing-to-analyse": (["analyze"], 2, "exactly one"),
    "analyze-horizon-past-the-text": (["analyze", "--init", "--hidden", "4", "--data", "corpus.txt", "--horizon",
                                       "5000"], 3, "lower --horizon"),
    "analyze-vocab-of-ints": (["analyze", "ints-vocab.pt"], 5, "damaged vocabulary"),
    # demo
    "demo-lr-nan": (["demo", "influence-balancing", "--lr", "nan"], 2, "--lr a finite number > 0"),
    "demo-lr-inf": (["demo", "influence-balancing", "--lr", "inf"], 2, "--lr a finite number > 0"),
    "demo-seed-2^63": (["demo", "influence-balancing", "--seed", BIG], 2, "--seed must be an integer"),
    "demo-n-huge": (["demo", "influence-balancing", "--n", "100000"], 2, "--n must be in 2..4096"),
    "demo-p-zero": (["demo", "influence-balancing", "--p", "0"], 2, "--p must be in 1..n-1"),
    "demo-steps-zero": (["demo", "influence-balancing", "--steps", "0"], 2, "--steps, --episode"),
    "demo-episode-past-the-steps": (["demo", "influence-balancing", "--steps", "100", "--episode", "10000000000"], 2,
                                    "--steps must be in --episode.."),
    "demo-steps-huge": (["demo", "influence-balancing", "--steps", "100000000000"], 2, "--steps must be in"),
    # download ({server}: a local HTTP server)
    "download-sha1-not-hex": (["download", "--url", "{server}/x.txt", "--sha1", "xyz", "--data-dir", "new"], 2,
                              "--sha1 must be 40 hexadecimal digits"),
    "download-sha1-39-digits": (["download", "--url", "{server}/x.txt", "--sha1", "a" * 39, "--data-dir", "new"], 2,
                                "--sha1 must be 40 hexadecimal digits"),
    "download-404": (["download", "--url", "{server}/missing.txt", "--data-dir", "dldir", "-q"], 4, "HTTP 404"),
    "download-checksum-mismatch": (["download", "--url", "{server}/x.txt", "--sha1", "0" * 40, "--data-dir", "dldir",
                                    "-q"], 4, "checksum mismatch"),
    "download-bad-scheme": (["download", "--url", "ftp://127.0.0.1/x.txt", "--data-dir", "dldir", "-q"], 4,
                            "cannot download ftp://127.0.0.1/x.txt"),
    "download-not-a-url": (["download", "--url", "not a url", "--data-dir", "dldir", "-q"], 4, "cannot download"),
    "download-data-dir-is-a-file": (["download", "--url", "{server}/x.txt", "--data-dir", "corpus.txt/sub", "-q"], 4,
                                    "cannot write to directory corpus.txt/sub"),
}


def test_the_matrix_covers_every_command():
    commands = {args[0] for args, _, _ in CASES.values()}
    assert commands == {"train", "sample", "compare", "analyze", "demo", "download"} and len(CASES) >= 40


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, world, cli_runner, monkeypatch, request):
    from bpttcli.cli import app

    args, code, says = CASES[case]
    if "/proc/self/mem" in " ".join(args) and not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/mem is Linux's")
    server = None
    if any("{server}" in a for a in args):
        server = request.getfixturevalue("http_server")
        server.routes["/x.txt"] = [("ok", b"a small corpus\n" * 10)]
        args = [a.replace("{server}", server.url("")) for a in args]
    monkeypatch.chdir(world)
    monkeypatch.setenv("BPTT_DATA_DIR", str(world / "dldir"))
    before = fingerprint(world)
    result = cli_runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert says in lines[0] and len(lines[0]) < 400, lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert fingerprint(world) == before and not (world / "new").exists()
    if server is not None and code == 2:
        assert server.hits == []  # refused before any request
