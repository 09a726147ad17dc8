"""The configuration tree: YAML < flags < --set, strict keys and values, round trips, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bpttcli.config import Config, LrSchedule, Partition, dump_yaml, from_dict, load_config, read_yaml, to_dict
from bpttcli.corpus import Preprocess
from bpttcli.errors import ConfigError
from bpttcli.choices import Cell  # the class config.py uses (recurrence re-exports it once merged)
from bpttcli.strategies import StrategyName

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.y*ml"))


def write_yaml(tmp_path, values: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def config_fails(*, path=None, flags=None, sets=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, flags, list(sets))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults():
    c = load_config()
    assert c == Config()
    assert c.data.val_fraction == 0.1 and c.data.preprocess is Preprocess.letters
    assert c.data.partition is Partition.sequential and c.strategy.name is StrategyName.truncated


def test_yaml_then_flags_then_set(tmp_path):
    values = {"model": {"hidden": 64, "cell": "gru"}, "optim": {"lr": 0.5}, "data": {"batch_size": 8}}
    path = write_yaml(tmp_path, values)
    flags = {"model.hidden": 32, "optim.lr": 0.25, "model.layers": None}
    c = load_config(path, flags, ["optim.lr=0.125", "optim.schedule=cosine"])
    assert c.model.cell is Cell.gru and c.data.batch_size == 8  # from YAML
    assert c.model.hidden == 32 and c.model.layers == 1  # flag wins; None flag leaves the default
    assert c.optim.lr == 0.125 and c.optim.schedule is LrSchedule.cosine  # --set wins


def test_enum_flags_are_accepted():
    c = load_config(None, {"model.cell": Cell.lstm, "data.preprocess": Preprocess.raw})
    assert c.model.cell is Cell.lstm and c.data.preprocess is Preprocess.raw


@pytest.mark.parametrize(
    "item, value",
    [("optim.lr=1e-3", 0.001), ("optim.lr=2", 2.0), ("train.max_tokens=1e6", 10**6), ("model.hidden=64.0", 64),
     ("data.path=my file.txt", "my file.txt"), ("data.path=", None), ("train.recompute=true", True)],
)
def test_set_values_parse_as_yaml(item, value):
    section, name = item.partition("=")[0].split(".")
    assert getattr(getattr(load_config(None, None, [item]), section), name) == value


def test_scientific_notation_in_yaml(tmp_path):
    assert load_config(write_yaml(tmp_path, {"optim": {"lr": "1e-3"}})).optim.lr == 0.001


BAD_SETS = [  # unknown keys, then bad types, then enums, then ranges
    "optim.lrr=1", "foo.bar=1", "model.hidden.size=3", "model=0",
    "model.hidden=big", "model.hidden=2.5", "optim.lr=true", "optim.lr=.nan", "optim.lr=.inf", "train.epochs=1e400",
    "train.seed=yes", "model.cell=transformer", "optim.lr=0", "data.batch_size=0", "data.val_fraction=1",
    "model.dropout=-0.1", "strategy.alpha=2", "train.epochs=0", "train.eval_tokens=-1",
]


@pytest.mark.parametrize("item", BAD_SETS)
def test_bad_set_names_the_dotted_key(item):
    key = item.partition("=")[0].removesuffix(".size")  # model.hidden.size: model.hidden is not a section
    assert key in config_fails(sets=[item])


@pytest.mark.parametrize(
    "values, named",
    [({"optim": {"momentum": 0.9}}, "'optim.momentum'"), ({"trainer": {"epochs": 1}}, "'trainer.epochs'"),
     ({"data": {"partition": "shuffled"}}, "data.partition"), ({"train": {"seed": "zero"}}, "train.seed"),
     ({"data": ["batch_size"]}, "data")],
)
def test_bad_yaml_names_the_dotted_key(tmp_path, values, named):
    assert named in config_fails(path=write_yaml(tmp_path, values))


def test_a_huge_number_is_a_config_error():
    assert "optim.lr" in config_fails(sets=["optim.lr=1" + "0" * 400])


def test_flags_are_validated_too():
    assert "strategy.tau" in config_fails(flags={"strategy.tau": -1})


@pytest.mark.parametrize("item", ["optim.lr", "=3", " =3"])
def test_set_needs_key_and_value(item):
    assert "KEY=VALUE" in config_fails(sets=[item])


@pytest.mark.parametrize(
    "content, expected",
    [(None, "not found"), ("a: [1", "not valid YAML"), ("- 1\n- 2\n", "mapping"), (b"\xff\xfe", "not valid YAML")],
)
def test_bad_config_files(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = config_fails(path=path)
    assert expected in message and str(path) in message


def test_config_path_is_a_directory(tmp_path):
    assert str(tmp_path) in config_fails(path=tmp_path)


def test_empty_yaml_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert read_yaml(path) == {} and load_config(path) == Config()


def test_dict_and_yaml_round_trip():
    c = load_config(None, None, ["model.cell=lstm", "optim.lr=0.01", "data.path=x.txt", "data.preprocess=raw"])
    plain = to_dict(c)
    assert plain["model"]["cell"] == "lstm"
    assert from_dict(plain) == c
    assert from_dict(yaml.safe_load(dump_yaml(c))) == c


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("flags, key", [
    ({"strategy.floor": 35}, "strategy.floor must be in [0, strategy.tau)"),
    ({"strategy.floor": -1}, "strategy.floor"),
    ({"strategy.name": "tbptt", "strategy.k2": 20}, "strategy.k2 must be >= strategy.tau"),
    ({"strategy.name": "tbptt", "data.partition": "random"}, "data.partition must be sequential for tbptt"),
])
def test_strategy_parameters_are_checked(flags, key):
    assert key in config_fails(flags=flags)
