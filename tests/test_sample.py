"""`bptt sample`: streaming, preprocessing of the prefix, reproducibility, unknown characters, bad input."""

from __future__ import annotations

import io
import shutil
from collections import Counter

import pytest
import torch

from bpttcli import checkpoint
from bpttcli.config import load_config
from tiny_run import PLAIN
from bpttcli.corpus import preprocess
from bpttcli.sample import Sampler, pick, sample
from bpttcli.train import train

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 3


def tiny_run(root, preprocess: str, device: str = "cpu"):
    corpus = root / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    flags = {**PLAIN, "data.path": str(corpus), "data.preprocess": preprocess, "model.hidden": 16, "data.batch_size": 2,
             "strategy.tau": 5, "train.max_steps": 30, "train.eval_every": 10, "train.device": device}
    train(load_config(None, flags), root / "run", quiet=True)
    return root / "run"


@pytest.fixture(scope="module")
def letters_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("letters"), "letters")


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("raw"), "raw")


def generate(run, **options) -> str:
    out = io.StringIO()
    sample(run, out=out, **options)
    return out.getvalue()


def test_cli_streams_preprocessed_prefix_then_length_chars(bptt, letters_run):
    out = bptt("sample", letters_run, "--prefix", "The  Time!", "--length", 40, "--seed", 1).output
    assert out.startswith("the time ") and out.endswith("\n")
    assert len(out.rstrip("\n")) == len("the time ") + 40
    assert set(out.rstrip("\n")) <= set("abcdefghijklmnopqrstuvwxyz ")


def test_seed_reproduces_and_samples_differ(letters_run):
    one = generate(letters_run, prefix="the", length=60, seed=3)
    assert generate(letters_run, prefix="the", length=60, seed=3) == one
    assert generate(letters_run, prefix="the", length=60, seed=4) != one
    samples = generate(letters_run, prefix="the", length=60, seed=3, num_samples=3).split("\n\n")
    assert len(samples) == 3 and samples[0] + "\n" == one and len(set(samples)) == 3


def test_greedy_and_top_1_agree(letters_run):
    greedy = generate(letters_run, prefix="the time", length=30, greedy=True)
    assert generate(letters_run, prefix="the time", length=30, top_k=1, seed=9) == greedy


def test_empty_prefix_starts_from_the_most_frequent_character(letters_run):
    out = generate(letters_run, length=25, seed=0)
    assert len(out) == 26 and "\ufffd" not in out
    # the warm-up character is the corpus's most frequent one (a space), fed but not printed: the sample
    # is what follows that character given as the prefix, draw for draw under the same seed
    most_frequent = Counter(preprocess(TEXT, "letters")).most_common(1)[0][0]
    assert most_frequent == " " and Sampler.load(letters_run, device="cpu").vocab.itos[1] == most_frequent
    assert out == generate(letters_run, prefix=most_frequent, length=25, seed=0)[1:]
    assert out != generate(letters_run, prefix="e", length=25, seed=0)[1:]  # the warm-up matters


def test_pick_never_returns_unk_and_honours_top_k():
    logits = torch.tensor([10.0, 1.0, 2.0, 3.0])
    g = torch.Generator().manual_seed(0)
    assert pick(logits, 1.0, 0, True, g) == 3
    assert {pick(logits, 5.0, 2, False, g) for _ in range(200)} == {2, 3}
    assert 0 not in {pick(logits, 100.0, 0, False, g) for _ in range(200)}


def test_unknown_characters(bptt_error, raw_run):
    line = bptt_error("sample", raw_run, "--prefix", "Zoë€", "--length", 5, code=2)
    assert "'Z'" in line and "'ë'" in line and "'€'" in line and "--unknown" in line
    assert generate(raw_run, prefix="Zoë€", length=5, seed=0, unknown="skip").startswith("o")
    assert generate(raw_run, prefix="Zoë", length=5, seed=0, unknown="unk").startswith("\ufffdo\ufffd")


def test_letters_mode_lowercases_instead_of_refusing(letters_run):
    assert generate(letters_run, prefix="HIS GREY", length=3, seed=0).startswith("his grey")


@pytest.mark.parametrize("args", [("--temperature", 0), ("--temperature", -1), ("--top-k", -1),
                                  ("--length", -1), ("-n", 0), ("--unknown", "ignore")])
def test_bad_options_are_one_line_errors(bptt_error, letters_run, args):
    line = bptt_error("sample", letters_run, *args, code=2)
    assert line.startswith("error: ") and args[0] in line


def test_corrupted_and_missing_checkpoints(bptt_error, letters_run, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((letters_run / "best.pt").read_bytes()[:500])
    assert "corrupted" in bptt_error("sample", bad, code=5)
    assert "no checkpoint" in bptt_error("sample", tmp_path / "missing.pt", code=5)
    assert "no checkpoint" in bptt_error("sample", tmp_path, code=5)
    checkpoint.save({"model": {}}, tmp_path / "empty.pt")
    assert "does not hold a bptt model" in bptt_error("sample", tmp_path / "empty.pt", code=5)


def test_last_picks_last_pt(bptt, bptt_error, letters_run, tmp_path):
    run = shutil.copytree(letters_run, tmp_path / "run")
    (run / "best.pt").write_bytes(b"garbage")
    bptt_error("sample", run, code=5)
    assert len(bptt("sample", run, "--last", "--length", 10, "--seed", 0).output) == 11


def test_loads_on_cpu(letters_run):
    sampler = Sampler.load(letters_run, device="cpu")
    assert {p.device.type for p in sampler.model.parameters()} == {"cpu"}
    assert not sampler.model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to write a GPU-trained checkpoint")
def test_gpu_checkpoint_samples_on_cpu(tmp_path):
    run = tiny_run(tmp_path, "letters", device="cuda")
    assert len(generate(run, length=20, seed=0, device="cpu")) == 21


# ------------------------------------------------------------------ nucleus sampling, a prefix from a file
def test_top_p_samples_only_from_the_nucleus():
    probs = torch.tensor([0.0, 0.5, 0.3, 0.15, 0.05])  # <unk> first, never sampled
    logits = torch.log(probs.clamp(min=1e-30))
    g = torch.Generator().manual_seed(0)

    def counts(top_p):
        return Counter(pick(logits, 1.0, 0, False, g, top_p) for _ in range(3000))

    assert set(counts(0.5)) == {1}  # 0.5 alone reaches 0.5
    assert set(counts(0.7)) == {1, 2}  # 0.5 + 0.3 reaches 0.7
    assert set(counts(0.85)) == {1, 2, 3}
    assert set(counts(1.0)) == {1, 2, 3, 4}
    within = counts(0.8)  # the nucleus {1, 2} renormalised: 5/8 and 3/8
    assert abs(within[1] / 3000 - 5 / 8) < 0.04


def test_top_p_applies_after_temperature_and_top_k():
    logits = torch.log(torch.tensor([1e-30, 0.4, 0.35, 0.25]))
    g = torch.Generator().manual_seed(0)
    assert {pick(logits, 1.0, 2, False, g, 0.5) for _ in range(500)} == {1}  # top 2, renormalised: 0.53 alone
    assert {pick(logits, 100.0, 0, False, g, 0.5) for _ in range(500)} == {1, 2}  # flat: two needed to reach 0.5


def test_prefix_file(bptt, letters_run, tmp_path):
    prefix = tmp_path / "start.txt"
    prefix.write_text("The Time\nTraveller!", encoding="utf-8")
    out = bptt("sample", letters_run, "--prefix-file", prefix, "--length", 20, "--seed", 1).output
    assert out.startswith("the time traveller ") and len(out.rstrip("\n")) == len("the time traveller ") + 20


@pytest.mark.parametrize("args, code, says", [
    (["--top-p", "0"], 2, "--top-p must be in (0, 1]"), (["--top-p", "1.5"], 2, "--top-p must be in (0, 1]"),
    (["--prefix", "a", "--prefix-file", "start.txt"], 2, "not both"),
    (["--prefix-file", "missing.txt"], 3, "is not a file"),
])
def test_top_p_and_prefix_file_errors(bptt_error, letters_run, tmp_path, args, code, says):
    (tmp_path / "start.txt").write_text("the", encoding="utf-8")
    assert says in bptt_error("sample", letters_run, *args, code=code)


def test_complete_returns_the_prefix_and_the_sample_as_one_string(letters_run):
    sampler = Sampler.load(letters_run)
    text = sampler.complete("The Time", length=30, top_p=0.9, seed=3)
    assert text.startswith("the time") and len(text) == len("the time") + 30
    assert sampler.complete("The Time", length=30, top_p=0.9, seed=3) == text


def test_pick_leaves_the_callers_logits_alone():
    logits = torch.tensor([0.5, 2.0, 1.0, 0.25])
    pick(logits, 1.0, 2, False, torch.Generator().manual_seed(0), 0.9)
    assert logits.tolist() == [0.5, 2.0, 1.0, 0.25]  # <unk> and the top-k cut were written into them


@pytest.mark.parametrize("args, says", [
    (("--temperature", "nan"), "--temperature must be a number in [0.0001, 10000]"),
    (("--temperature", "inf"), "--temperature must be a number in [0.0001, 10000]"),
    (("--temperature", "1e308"), "--temperature must be a number in [0.0001, 10000]"),
    (("--temperature", "1e-300"), "--temperature must be a number in [0.0001, 10000]"),
    (("--seed", 2**63), "--seed must be an integer in [0, 2^63)"),
    (("--seed", -1), "--seed must be an integer in [0, 2^63)"),
])
def test_values_that_used_to_crash_are_one_line_errors(bptt_error, letters_run, args, says):
    assert says in bptt_error("sample", letters_run, *args, code=2, alone=True)


def test_the_temperature_range_samples(letters_run):
    for temperature in (1e-4, 1e4):
        assert len(generate(letters_run, length=20, seed=0, temperature=temperature)) == 21


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.update(vocab=[1, 2, 3]), "damaged vocabulary"),
    (lambda p: p["config"]["model"].update(hidden=-4), "does not hold a bptt model (model.hidden must be > 0"),
], ids=["vocab-of-ints", "invalid-config"])
def test_a_damaged_checkpoint_is_one_line_naming_it(bptt_error, letters_run, tmp_path, damage, says):
    payload = checkpoint.load(letters_run / "best.pt")
    damage(payload)
    checkpoint.save(payload, tmp_path / "bad.pt")
    line = bptt_error("sample", tmp_path / "bad.pt", code=5, alone=True)
    assert says in line and str(tmp_path / "bad.pt") in line
