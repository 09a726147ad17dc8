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
    assert c.data.partition is Partition.sequential and c.strategy.name is StrategyName.random  # the main job's
    main_job = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    assert main_job == c  # the defaults are the main job: configs/default.yaml only writes them down


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


# ------------------------------------------------------------------ hostile values
def alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML that expand to 9**levels strings under data.path."""
    lines = ["data:", "  path:", "    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    - &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(6), encoding="utf-8")  # 530k strings once expanded (today's line: 2.6 MB)
    message = config_fails(path=path)
    assert len(path.read_bytes()) < 1000 and len(message) < 300
    assert "expands to more than 10,000 values" in message and str(path) in message


@pytest.mark.parametrize("content", ["[" * 1000, "a: &a [*a]\n"], ids=["deep", "recursive"])
def test_a_yaml_nested_too_deep_or_recursive_is_refused(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_text(content, encoding="utf-8")
    assert "not valid YAML" in config_fails(path=path)


@pytest.mark.parametrize("values, named", [
    ({"model": {"cell": "x" * 5000}}, "model.cell"),
    ({"data": {"path": ["y" * 100] * 1000}}, "data.path"),
    ({"optim": {"lr": {"k" * 3000: 1}}}, "optim.lr"),
    ({"train": {"z" * 5000: 1}}, "unknown config key"),
])
def test_error_messages_cut_the_bad_value(tmp_path, values, named):
    message = config_fails(path=write_yaml(tmp_path, values))
    assert named in message and len(message) < 300


def test_a_section_that_is_not_a_mapping_is_named_as_such_when_a_flag_sets_a_key_in_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n", encoding="utf-8")
    message = config_fails(path=path, flags={"train.max_steps": 3})
    assert "train: expected a mapping of keys, got 5" in message and "unknown config key" not in message


@pytest.mark.parametrize("item, named", [
    ("train.seed=9223372036854775808", "train.seed must be an integer in [0, 2^63)"),
    ("train.seed=-1", "train.seed must be an integer in [0, 2^63)"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be >= 0"),
    ("train.checkpoint_every=.nan", "train.checkpoint_every: expected a finite number"),
    ("data.sha1=xyz", "data.sha1 must be 40 hexadecimal digits"),
    ('data.path="a\\0b"', "data.path must be a file path"),
])
def test_values_that_would_crash_later_are_refused_up_front(item, named):
    assert named in config_fails(sets=[item])


def test_seed_range_and_checkpoint_period_defaults():
    assert load_config(None, {"train.seed": 2**63 - 1}).train.seed == 2**63 - 1
    assert Config().train.checkpoint_every == 60.0
    assert load_config(None, None, ["data.sha1=''"]).data.sha1 == ""
