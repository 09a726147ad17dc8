"""`bptt compare` on a tiny corpus: the runs, the tables, results.{json,csv,md}, curves.png, rerun and Ctrl-C."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from bpttcli import compare as lib
from bpttcli import compare_report as report
from bpttcli import gradient_quality
from bpttcli.errors import ConfigError
from bpttcli.errors import Interrupted

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 8
TAU, BUDGET = 6, 1200
SETS = ["model.hidden=12", "data.batch_size=3", f"strategy.tau={TAU}", "train.eval_every=10",
        "train.log_every=5", "train.device=cpu"]
ALL = ["full", "truncated", "random-geometric", "random-polytail"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tiny_config(corpus, budget=BUDGET):
    return lib.compare_config(None, corpus, budget, None, SETS)


@pytest.fixture(scope="module")
def done(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return lib.compare(tiny_config(corpus), ALL, [0, 1], out), out


def rows(results) -> dict:
    return {r["strategy"]: r for r in results["rows"]}


def test_one_row_per_strategy_with_the_same_budget(done):
    results, _ = done
    r = rows(results)
    assert list(r) == ALL and all(row["seeds"] == 2 for row in r.values())
    for run in results["runs"]:
        if run["strategy"] != "full":  # the budget, and at most the last segment over it
            assert BUDGET <= run["tokens"] <= BUDGET + 3 * run["segment_max"] and run["step"] > 10
    assert r["full"]["updates"]["mean"] == 1 and r["full"]["segment_mean"]["mean"] > 50  # one segment per epoch
    assert r["truncated"]["segment_max"]["mean"] == TAU and r["truncated"]["max_weight"]["mean"] == 1
    assert r["random-geometric"]["max_weight"]["mean"] > 1 and r["random-polytail"]["max_weight"]["mean"] > 1
    for row in r.values():
        assert 1 < row["best_val_ppl"]["mean"] <= row["final_val_ppl"]["mean"] < 60
        assert row["peak_memory_mib"]["mean"] > 0 and row["wall_s"]["mean"] > 0 and row["tokens_per_s"]["mean"] > 0
        assert row["best_val_ppl"]["sd"] > 0  # two seeds, two different runs
    assert r["full"]["peak_memory_mib"]["mean"] > 5 * r["truncated"]["peak_memory_mib"]["mean"]


def test_runs_share_initial_weights_and_data(done):
    _, out = done
    configs = [json.loads(p.read_text())["config"] for p in sorted((out / "runs").glob("*-s0/summary.json"))]
    assert len(configs) == 4
    for c in configs:
        assert (c["model"], c["data"], c["train"]["seed"]) == (configs[0]["model"], configs[0]["data"], 0)


def test_gradient_quality(done):
    q = done[0]["gradient_quality"]
    assert (q["windows"], q["length"], q["draws"]) == (gradient_quality.WINDOWS, 5 * TAU, gradient_quality.DRAWS)
    by = {(r["strategy"], r["at"]): r for r in q["rows"]}
    assert len(by) == 8
    for at in ("initial", "trained"):
        full, trunc = by["full", at], by["truncated", at]
        assert full["bias"] < 1e-6 and full["rel_sd"] == 0 and full["cosine"] > 0.9999 and full["reach"] == 1
        assert trunc["bias"] > 1e-3 and trunc["rel_sd"] == 0 and trunc["memory"] == pytest.approx(1 / 5)
        assert trunc["bias"] > 2 * trunc["bias_floor"] + 0.01  # biased: clearly above its floor (0: deterministic)
        for name in ("random-geometric", "random-polytail"):
            row = by[name, at]
            assert row["rel_sd"] > 0 and row["bias_floor"] > 0 and 0 < row["reach"] <= 1 and -1 <= row["cosine"] <= 1
            assert row["bias"] < 2 * row["bias_floor"]  # unbiased: only the noise of its draws (3-6x without xi)


def test_files(done):
    results, out = done
    assert {p.name for p in out.iterdir()} == {"runs", "results.json", "results.csv", "results.md", "curves.png"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"])) and len(saved["runs"]) == 8
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["strategy"] for r in table] == ALL
    assert float(table[1]["best_val_ppl_mean"]) == pytest.approx(rows(results)["truncated"]["best_val_ppl"]["mean"])
    md = (out / "results.md").read_text()
    assert md.count("| random-polytail |") == 4 and "| random-polytail | trained |" in md and "val ppl best" in md
    assert "| \\|g\\| median |" in md  # a pipe inside a cell is escaped, so every row keeps its columns
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert all((out / "runs" / f"{v}-s{s}" / "summary.json").is_file() for v in ALL for s in (0, 1))


def test_rerun_skips_finished_runs_and_redoes_unfinished_ones(done, corpus, monkeypatch):
    _, out = done
    (out / "runs" / "truncated-s1" / "summary.json").unlink()
    trained = []
    real_train = lib.train
    monkeypatch.setattr(lib, "train", lambda config, *a, **k: trained.append(config.train.run_dir) or real_train(
        config, *a, **k))
    again = lib.compare(tiny_config(corpus), ALL, [0, 1], out, gradients=False)
    assert trained == [str(out / "runs" / "truncated-s1")]
    assert again["gradient_quality"] is None and len(again["rows"]) == 4


def test_rerun_with_another_config_is_refused(done, corpus):
    with pytest.raises(ConfigError, match="another config"):
        lib.compare(tiny_config(corpus, budget=BUDGET + 100), ["truncated"], [0], done[1], gradients=False)


def test_ctrl_c_keeps_finished_runs(corpus, tmp_path, monkeypatch):
    real_train = lib.train
    calls = []

    def interrupted_second(config, *args, **kwargs):
        calls.append(config.strategy.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(lib, "train", interrupted_second)
    with pytest.raises(Interrupted, match="the 1 finished runs are kept"):
        lib.compare(tiny_config(corpus), ["truncated", "random-geometric"], [0], tmp_path, gradients=False)
    assert [p.parent.name for p in (tmp_path / "runs").glob("*/summary.json")] == ["truncated-s0"]


def test_cli_prints_tables(bptt, corpus, tmp_path):
    sets = [arg for s in SETS for arg in ("--set", s)]
    result = bptt("compare", "--data", corpus, "--strategies", "truncated,random-polytail", "--seeds", "3",
                  "--budget-tokens", 300, "--out", tmp_path / "cli", "--no-gradient-quality", *sets)
    for text in ("val ppl", "truncated", "random-polytail", "peak MiB", "during training", "results.json"):
        assert text in result.stdout
    assert "gradient quality" not in result.stdout


def test_tables_fit_80_columns_with_every_cell_whole(done):
    import io

    from rich.console import Console

    results, _ = done
    for title, headers, rows, caption in report.tables(results):
        out = io.StringIO()
        Console(file=out, width=80, color_system=None).print(report.rich_table(title, headers, rows, ""))
        text = out.getvalue()
        assert all(len(line.rstrip()) <= 80 for line in text.splitlines()) and "…" not in text, text
        for row in rows:  # each row on one line, every cell whole
            assert any(all(cell in line for cell in row) for line in text.splitlines()), row


@pytest.mark.parametrize("args, message", [
    (("--strategies", "full,bogus"), "unknown strategy 'bogus'"),
    (("--strategies", ""), "unknown strategy ''"),
    (("--seeds", "0,x"), "--seeds '0,x'"),
    (("--seeds", "1,1"), "distinct"),
    (("--seeds", "-1"), "non-negative"),
    (("--budget-tokens", 10, "--max-time", 5), "not both"),
    (("--set", "optim.lr=-1"), "optim.lr"),
])
def test_bad_input_is_one_line(bptt_error, corpus, args, message):
    assert message in bptt_error("compare", "--data", corpus, *args, code=2)


def test_parsers():
    assert lib.parse_strategies("random, truncated,random-geometric") == ["random-geometric", "random-polytail",
                                                                           "truncated"]
    assert lib.parse_seeds("2,0") == [2, 0]


def test_beyond_the_chapter_tbptt_floor_and_full_over_windows(corpus, tmp_path):
    results = lib.compare(tiny_config(corpus, budget=400), ["full-window", "random-floor", "tbptt"], [0], tmp_path)
    r, runs = rows(results), {run["strategy"]: run for run in results["runs"]}
    assert runs["full-window"]["segment_max"] == TAU and runs["full-window"]["step"] > 5  # windows of tau
    assert runs["tbptt"]["segment_max"] == TAU and runs["random-floor"]["segment_max"] > TAU // 2
    quality = {(q["strategy"], q["at"]): q for q in results["gradient_quality"]["rows"]}
    assert quality["tbptt", "initial"]["backward"] > 1.5  # it replays tau steps of context per segment
    assert quality["tbptt", "initial"]["reach"] > quality["full-window", "initial"]["reach"]
    assert quality["random-floor", "initial"]["backward"] == 1
    assert r["tbptt"]["best_val_ppl"]["mean"] < 60


def tree(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli_args(corpus, out, budget=BUDGET):
    sets = [arg for s in SETS for arg in ("--set", s)]
    return ("compare", "--data", corpus, "--strategies", "truncated", "--seeds", "0", "--budget-tokens", budget,
            "--out", out, "--no-gradient-quality", *sets)


def test_a_rerun_with_another_config_is_one_line_without_a_progress_bar(bptt_error, done, corpus, tmp_path):
    out = shutil.copytree(done[1], tmp_path / "copy")
    before = tree(out)
    line = bptt_error(*cli_args(corpus, out, BUDGET + 100), code=2, alone=True)
    assert "was trained with another config" in line and tree(out) == before


def test_a_damaged_summary_json_is_one_line_and_nothing_is_rewritten(bptt_error, done, corpus, tmp_path):
    out = shutil.copytree(done[1], tmp_path / "copy")
    summary = out / "runs" / "truncated-s0" / "summary.json"
    summary.write_bytes(summary.read_bytes()[:100])
    before = tree(out)
    line = bptt_error(*cli_args(corpus, out), code=5, alone=True)
    assert f"{summary} is damaged (JSONDecodeError); delete {summary.parent} to redo that run" in line
    assert tree(out) == before


def test_summary_json_is_strict(done):
    _, out = done
    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in {path}"))
