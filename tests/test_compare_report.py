"""bpttcli.compare_report without training: rows over seeds, the tables, Markdown, CSV, JSON and the curves."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from bpttcli import compare_report as report
from bpttcli.config import load_config
from bpttcli.fsutil import to_json


def summary(ppl: float, **changes) -> dict:
    """A run's summary with every metric the report reads."""
    return {key: 1.0 for key in report.RUN_METRICS.values()} | {"best_val_ppl": ppl} | changes


RECORDS = [
    {"strategy": "truncated", "seed": 0, "summary": summary(4.0)},
    {"strategy": "truncated", "seed": 1, "summary": summary(6.0)},
    {"strategy": "full", "seed": 0, "summary": summary(20.0, grad_norm_max=float("nan"))},
]


def results(gradient_quality=None) -> dict:
    rows = report.aggregate(RECORDS, ["full", "truncated"])
    return {"title": "GRU | test", "seeds": [0, 1], "memory": "peak MiB: something", "rows": rows,
            "gradient_quality": gradient_quality}


def test_aggregate_one_row_per_strategy_mean_and_sd_over_seeds():
    full, trunc = report.aggregate(RECORDS, ["full", "truncated"])
    assert (full["strategy"], full["seeds"], trunc["strategy"], trunc["seeds"]) == ("full", 1, "truncated", 2)
    assert trunc["best_val_ppl"] == {"mean": 5.0, "sd": pytest.approx(2**0.5)}  # sample sd of 4 and 6
    assert full["best_val_ppl"] == {"mean": 20.0, "sd": 0.0} and set(full) == {"strategy", "seeds", *report.RUN_METRICS}


def test_json_is_strict():
    rows = results()["rows"]
    assert math.isnan(rows[0]["grad_norm_max"]["mean"])
    text = to_json(rows)  # what write_outputs writes; json.dumps(allow_nan=False) would raise on NaN
    assert json.loads(text)[0]["grad_norm_max"]["mean"] is None and json.loads(text)[1] == rows[1]


def test_csv_has_a_mean_and_an_sd_column_per_metric():
    table = list(csv.DictReader(io.StringIO(report.to_csv(results()["rows"]))))
    assert [r["strategy"] for r in table] == ["full", "truncated"]
    assert float(table[1]["best_val_ppl_mean"]) == 5 and float(table[1]["best_val_ppl_sd"]) == pytest.approx(2**0.5)
    assert len(table[0]) == 2 + 2 * len(report.RUN_METRICS)


def test_tables_and_markdown_with_and_without_gradient_quality():
    assert [t[0] for t in report.tables(results())] == ["GRU | test", "during training"]
    caption = report.tables(results())[0][3]
    assert caption == "mean ± sd over seeds 0, 1; peak MiB: something"
    quality = {"windows": 2, "length": 30, "draws": 4, "rows": [
        {"strategy": "full", "at": "initial", "bias": 0.0, "bias_floor": 0.0, "rel_sd": 0.0, "cosine": 1.0,
         "reach": 1.0, "memory": 1.0, "backward": 1.0}]}
    title, headers, rows, _ = report.tables(results(quality))[2]
    assert title == "gradient quality: 2 windows of 30 steps, 4 draws per random strategy"
    assert rows == [["full", "initial", "0.000", "0.000", "0.000", "1.000", "1.00", "1.00", "1.00"]] and len(headers) == 9
    md = report.markdown(results(quality))
    assert md.startswith("# bptt compare\n") and "**GRU | test**" in md and "| truncated | 5.00±1.41 |" in md
    assert "| full | initial | 0.000 |" in md and all(line.count(" | ") == 8 for line in md.splitlines()
                                                         if line.startswith("| full | initial"))
    assert report.rich_table(*report.tables(results())[0]).row_count == 2


def test_describe_names_model_tau_batch_optimizer_and_budget():
    config = load_config(None, {"model.cell": "gru", "model.hidden": 64, "strategy.tau": 20, "train.max_tokens": 50000,
                                "optim.optimizer": "sgd", "optim.lr": 1.0, "train.max_time": 0})
    assert report.describe(config) == "GRU-64x1 · tau 20 · batch 32 · sgd lr 1 · 50.0k chars per run"
    config.train.max_time = 90.0
    assert report.describe(config).endswith("· 90 s per run")
