"""`bptt eval` on a run made here (a CJK corpus: a vocabulary over 256, ids in uint16) and `bptt prepare`."""

from __future__ import annotations

import json
import math

import pytest

from bpttcli.evaluation import Split, select

CJK = "".join(chr(0x4E00 + (i * 37) % 300) for i in range(1200)) + "。\n"  # 300 characters: uint16 ids
TINY = ("--hidden", 16, "-b", 2, "-t", 5, "--device", "cpu", "-q", "--preprocess", "raw")


@pytest.fixture
def run(bptt, tiny_corpus, tmp_path):
    """A run on the CJK corpus: 12 steps, validated at 6 and 12 on the whole (short) validation split."""
    corpus = tiny_corpus(CJK, name="cjk.txt")
    bptt("train", "--data", corpus, *TINY, "--max-steps", 12, "--eval-every", 6, "--run-dir", tmp_path / "run")
    return tmp_path / "run", corpus


def evaluated(bptt, *args) -> dict:
    return json.loads(bptt("eval", *args, "--json", "-q").output)


def test_eval_of_the_best_model_on_its_validation_split_repeats_training_s_number(bptt, run):
    run_dir, corpus = run
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    best = min(evals, key=lambda r: r["val_loss"])
    result = evaluated(bptt, run_dir)
    assert result["split"] == "val" and result["chars"] == best["val_chars"] > 0
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2))
    assert result["perplexity"] == pytest.approx(best["val_ppl"], rel=1e-6) and result["unknown_chars"] == 0
    last = evaluated(bptt, run_dir, "--last")
    assert last["loss"] == pytest.approx(evals[-1]["val_loss"], rel=1e-6) and last["checkpoint"].endswith("last.pt")
    assert "bits/char" in bptt("eval", run_dir, "-q").output


def test_eval_on_another_file_counts_characters_outside_the_vocabulary(bptt, run, tiny_corpus):
    run_dir, _ = run
    other = tiny_corpus(CJK[:200] + "漢字abc" * 10, name="other.txt")
    result = evaluated(bptt, run_dir, "--data", other)
    assert result["split"] == "all" and result["chars"] == 200 + 50 - 1
    assert result["unknown_chars"] == 50 and sorted(result["outside_vocabulary"]) == sorted("漢字abc")
    assert "outside the vocabulary scored as <unk>" in bptt("eval", run_dir, "--data", other, "-q").output


def test_eval_splits_and_a_bound_on_the_characters(bptt, run):
    run_dir, _ = run
    sizes = {split: evaluated(bptt, run_dir, "--split", split)["chars"] for split in ("train", "val", "all")}
    assert sizes["train"] + sizes["val"] + 1 == sizes["all"] == len(CJK) - 1
    assert evaluated(bptt, run_dir, "--split", "all", "--max-chars", 17)["chars"] == 17


def test_eval_errors_are_one_line(bptt_error, run, tiny_corpus):
    run_dir, _ = run
    assert "--split must be one of val, train, all" in bptt_error("eval", run_dir, "--split", "test", code=2)
    assert "--max-chars must be >= 0" in bptt_error("eval", run_dir, "--max-chars", -1, code=2)
    assert "too few to evaluate" in bptt_error("eval", run_dir, "--data", tiny_corpus("x", name="x.txt"), code=3)
    assert "no checkpoint" in bptt_error("eval", run_dir / "missing", code=5)


def test_select_takes_the_training_split_point():
    tokens = list(range(10))
    assert select(tokens, Split.val, 0.3) == [7, 8, 9] and select(tokens, Split.train, 0.3) == list(range(7))
    assert select(tokens, Split.all, 0.3) == tokens and select(tokens, Split.val, 0.0) == []


def test_prepare_ahead_of_time_then_train_uses_the_cache(bptt, tiny_corpus, tmp_path):
    corpus = tiny_corpus(CJK, name="cjk.txt")
    first = bptt("prepare", corpus, "--preprocess", "raw").output
    assert "prepared cjk.txt" in first and "vocabulary 303 (uint16)" in first  # 300 + "。" + newline + <unk>
    assert str(tmp_path / "data" / "prepared") in first  # $BPTT_DATA_DIR, set by the fixture
    again = bptt("prepare", corpus, "--preprocess", "raw").output
    assert "prepared cjk.txt" not in again and f"{len(CJK):,} characters" in again
    trained = bptt("train", "--data", corpus, *TINY[:-3], "--preprocess", "raw", "--max-steps", 2,
                   "--run-dir", tmp_path / "run").output
    assert "prepared cjk.txt" not in trained and "vocab 303" in trained
