"""One typed configuration tree: YAML file, then command-line flags, then `--set dotted.key=value`."""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import types
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .choices import Cell, Schedule, StrategyName
from .corpus import Preprocess
from .errors import ConfigError, shown

DEFAULT_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"  # The Time Machine, d2l.ai's copy
DEFAULT_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"


def check_sha1(sha1: str | None, option: str = "--sha1") -> None:
    """Refuse, before any request, a checksum that is neither empty (no check) nor 40 hexadecimal digits."""
    text = (sha1 or "").strip()
    if text and not re.fullmatch(r"[0-9a-fA-F]{40}", text):
        raise ConfigError(f"{option} must be 40 hexadecimal digits (a SHA-1), or empty to skip the check "
                          f"(got {shown(sha1)})")


class Partition(str, enum.Enum):
    sequential = "sequential"
    random = "random"


class OptimizerName(str, enum.Enum):
    sgd = "sgd"
    adam = "adam"


class LrSchedule(str, enum.Enum):
    constant = "constant"
    cosine = "cosine"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


@dataclass
class DataConfig:
    path: str | None = None  # a UTF-8 text file; None means The Time Machine, downloaded and cached
    url: str = DEFAULT_URL
    sha1: str = DEFAULT_SHA1
    data_dir: str | None = None  # downloads and the prepared token cache; None means $BPTT_DATA_DIR or ./data
    preprocess: Preprocess = Preprocess.letters
    max_chars: int = 0  # only the first N characters of the preprocessed text (the book's max_tokens); 0 = all
    val_fraction: float = 0.1
    partition: Partition = Partition.sequential
    batch_size: int = 32


@dataclass
class ModelConfig:
    cell: Cell = Cell.gru
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.0
    embedding: int = 0  # 0 means one-hot input
    weight_drop: float = 0.2  # DropConnect on W_hh, one mask per segment
    locked_dropout: float = 0.25  # variational dropout: one mask per stream and segment, on every layer's output
    embed_dropout: float = 0.0  # drop whole rows of the embedding (needs model.embedding > 0)


@dataclass
class StrategyConfig:
    name: StrategyName = StrategyName.random
    tau: int = 35  # τ: the nominal segment length (truncated's, random's mean) and the loss normaliser B·τ
    schedule: Schedule = Schedule.geometric
    alpha: float = 4.0  # polytail exponent
    floor: int = 0  # random: no cut in a segment's first `floor` steps (0 <= floor < tau)
    k2: int = 0  # tbptt: the losses of every tau (k1) steps backpropagate through k2 >= tau steps; 0 = 2 tau


@dataclass
class OptimConfig:
    optimizer: OptimizerName = OptimizerName.adam
    lr: float = 0.003
    clip: float = 1.0  # global L2 norm; 0 disables
    weight_decay: float = 0.1
    schedule: LrSchedule = LrSchedule.cosine
    average: float = 0.999  # decay of the weights' moving average used to validate, save best.pt and sample; 0 = off


@dataclass
class TrainConfig:
    epochs: int = 30
    max_steps: int = 0  # 0 means no limit
    max_time: float = 300.0  # seconds; 0 means no limit
    max_tokens: int = 0  # training characters; 0 means no limit
    eval_every: int = 300  # steps; 0 evaluates only at the end
    eval_tokens: int = 100_000  # validation characters each evaluation predicts (the same first ones); 0 = all
    log_every: int = 50
    seed: int = 0
    device: Device = Device.auto
    run_dir: str | None = None
    recompute: bool = False  # segment checkpointing: O(sqrt(L)) memory for long segments
    progress_every: float = 10.0  # seconds between plain progress lines when stderr is not a terminal (a log)
    tensorboard: bool = False  # also write metrics.jsonl's scalars to <run_dir>/tensorboard (bptt[tensorboard])
    checkpoint_every: float = 60.0  # seconds between saves of last.pt besides the evaluations'; 0 = only those


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value, kind, key: str):
    """Convert a YAML value to the field's type, or raise a ConfigError naming the key."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ConfigError(f"{key}: {shown(value)} is not one of {choices}") from None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    number = None if isinstance(value, bool) else _as_float(value)
    if kind is int and number is not None and number.is_integer():  # 1e6 or '1e6'
        return int(number)
    if kind is float and number is not None:
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {shown(value)}")
        return number
    if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {kind.__name__}, got {shown(value)}")


def _as_float(value) -> float | None:
    """A number, or a numeric string such as '1e-3' (YAML 1.1 reads that as a string); else None."""
    try:
        return float(value) if isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        return None


def _first_leaf(key: str, value) -> str:
    """The dotted key the user wrote: 'foo' with {'bar': 1} -> 'foo.bar'."""
    while isinstance(value, dict) and value:
        child, value = next(iter(value.items()))
        key = f"{key}.{child}"
    return key


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {shown(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            where = f"under {prefix.rstrip('.')}" if prefix else "at the top level"
            raise ConfigError(
                f"unknown config key {shown(_first_leaf(prefix + str(key), values[key]))}; "
                f"valid keys {where}: {', '.join(sorted(names))}"
            )
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, {} if value is None else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, prefix + name)
    return cls(**kwargs)


def to_dict(config) -> dict:
    """Plain nested dict (enums as their values): what config.yaml and checkpoints store."""
    plain = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        plain[f.name] = value
    return plain


RENAMED_KEYS = {("strategy", "num_steps"): "tau"}  # keys of older configs and checkpoints
# Keys added after a run may have been saved, with the value that run trained with (its regularisers off):
# a saved config lacking them means that, not today's defaults (the main job's).
ADDED_KEYS = {("model", "weight_drop"): 0.0, ("model", "locked_dropout"): 0.0, ("optim", "average"): 0.0}


def _upgrade(values: dict) -> dict:
    """Rename keys that older versions wrote, so their configs and checkpoints still load."""
    for (section, old), new in RENAMED_KEYS.items():
        node = values.get(section)
        if isinstance(node, dict) and old in node and new not in node:
            node[new] = node.pop(old)
    return values


def saved_config(values: dict) -> dict:
    """A config saved by a run (config.yaml, a checkpoint): keys it predates filled with what it trained with."""
    values = _upgrade(copy.deepcopy(values))
    for (section, key), value in ADDED_KEYS.items():
        node = values.get(section)
        if isinstance(node, dict):
            node.setdefault(key, value)
    return values


def from_dict(values: dict) -> Config:
    return validate(_build(Config, _upgrade(copy.deepcopy(values))))


def _set_dotted(tree: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents, 1):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            section = ".".join(parents[:depth])
            raise ConfigError(f"{section[:80]}: expected a mapping of keys, got {shown(child)}; "
                              f"cannot set {shown(key)} (fix the config file)")
        node = child
    node[leaf] = value


def parse_set(item: str) -> tuple[str, object]:
    """'optim.lr=0.5' -> ('optim.lr', 0.5), the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shown(item)} is not KEY=VALUE; e.g. --set optim.lr=0.5")
    try:
        return key.strip(), load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        return key.strip(), raw


MAX_YAML_VALUES = 10_000  # a config has ~40; an alias bomb expands a few lines into billions


class YamlTooLarge(yaml.YAMLError):
    pass


def load_yaml(text: str):
    """yaml.safe_load, refusing a document that expands (through aliases) past MAX_YAML_VALUES values or
    nests past Python's recursion limit: a few lines must not become gigabytes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise YamlTooLarge(f"it expands to more than {MAX_YAML_VALUES:,} values through aliases")
        return None if node is None else loader.construct_document(node)
    except RecursionError:
        raise YamlTooLarge("it is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict) -> int:
    """Values in `node` once every alias is expanded (each shared node counted once per use); a cycle counts
    as too many."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_YAML_VALUES + 1  # seen again while being counted: a recursive alias
    children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in children for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_VALUES:
            break
    sizes[id(node)] = total
    return total


def read_yaml(path: Path) -> dict:
    path = Path(path)
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file, e.g. configs/default.yaml") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first[:200]}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}; pass a readable YAML file") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    return values


def load_config(
    path: Path | None = None, flags: dict | None = None, sets: list[str] = (), base: dict | None = None
) -> Config:
    """`base` or the YAML file (if any), then flags (dotted key -> value, None skipped), then --set items."""
    values = _upgrade(copy.deepcopy(base) if base is not None else read_yaml(path) if path else {})
    overrides = [(k, v) for k, v in (flags or {}).items() if v is not None] + [parse_set(s) for s in sets]
    for key, value in overrides:
        _set_dotted(values, key, value.value if isinstance(value, enum.Enum) else value)
    return from_dict(values)


def _check(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule} (got {shown(value)})")


MAX_SEED = 2**63  # seeds are 64-bit signed integers in torch's generators


def check_seed(seed: int, option: str) -> None:
    """A seed every generator takes: an integer in [0, 2^63)."""
    if not 0 <= seed < MAX_SEED:
        raise ConfigError(f"{option} must be an integer in [0, 2^63) (got {shown(seed)})")


def _check_path(path: str | None, key: str) -> None:
    """A path the operating system can take: no NUL character, not longer than PATH_MAX."""
    if path is not None:
        _check("\0" not in path and len(path) <= 4096, key, "a file path (no NUL, at most 4096 characters)", path)


def validate(c: Config) -> Config:
    _check_path(c.data.path, "data.path")
    _check_path(c.data.data_dir, "data.data_dir")
    _check_path(c.train.run_dir, "train.run_dir")
    check_sha1(c.data.sha1, "data.sha1")
    _check(c.data.batch_size > 0, "data.batch_size", "> 0", c.data.batch_size)
    _check(0 <= c.data.val_fraction < 1, "data.val_fraction", "in [0, 1)", c.data.val_fraction)
    _check(c.data.max_chars >= 0, "data.max_chars", ">= 0 (0 = the whole text)", c.data.max_chars)
    _check(c.model.hidden > 0, "model.hidden", "> 0", c.model.hidden)
    _check(c.model.layers > 0, "model.layers", "> 0", c.model.layers)
    _check(0 <= c.model.dropout < 1, "model.dropout", "in [0, 1)", c.model.dropout)
    _check(c.model.embedding >= 0, "model.embedding", ">= 0 (0 = one-hot)", c.model.embedding)
    for key in ("weight_drop", "locked_dropout", "embed_dropout"):
        _check(0 <= getattr(c.model, key) < 1, f"model.{key}", "in [0, 1)", getattr(c.model, key))
    _check(c.model.embedding > 0 or c.model.embed_dropout == 0, "model.embed_dropout",
           "0 with one-hot input (set model.embedding > 0)", c.model.embed_dropout)
    _check(c.strategy.tau > 0, "strategy.tau", "> 0", c.strategy.tau)
    _check(c.strategy.alpha > 2, "strategy.alpha", "> 2", c.strategy.alpha)
    _check(0 <= c.strategy.floor < c.strategy.tau, "strategy.floor", "in [0, strategy.tau)", c.strategy.floor)
    _check(c.strategy.k2 == 0 or c.strategy.k2 >= c.strategy.tau, "strategy.k2", ">= strategy.tau (or 0: 2 tau)",
           c.strategy.k2)
    _check(c.strategy.name is not StrategyName.tbptt or c.data.partition is Partition.sequential, "data.partition",
           "sequential for tbptt (its context is the steps before each segment)", c.data.partition.value)
    _check(c.optim.lr > 0, "optim.lr", "> 0", c.optim.lr)
    _check(c.optim.clip >= 0, "optim.clip", ">= 0 (0 disables clipping)", c.optim.clip)
    _check(c.optim.weight_decay >= 0, "optim.weight_decay", ">= 0", c.optim.weight_decay)
    _check(0 <= c.optim.average < 1, "optim.average", "in [0, 1) (0 = off)", c.optim.average)
    _check(c.train.epochs > 0, "train.epochs", "> 0", c.train.epochs)
    _check(c.train.max_steps >= 0, "train.max_steps", ">= 0 (0 = no limit)", c.train.max_steps)
    _check(c.train.max_tokens >= 0, "train.max_tokens", ">= 0 (0 = no limit)", c.train.max_tokens)
    _check(c.train.max_time >= 0, "train.max_time", ">= 0 (0 = no limit)", c.train.max_time)
    _check(c.train.eval_every >= 0, "train.eval_every", ">= 0", c.train.eval_every)
    _check(c.train.eval_tokens >= 0, "train.eval_tokens", ">= 0 (0 = the whole validation split)", c.train.eval_tokens)
    _check(c.train.log_every > 0, "train.log_every", "> 0", c.train.log_every)
    _check(c.train.progress_every > 0, "train.progress_every", "> 0 (seconds)", c.train.progress_every)
    _check(c.train.checkpoint_every >= 0, "train.checkpoint_every", ">= 0 seconds (0 = only at evaluations)",
           c.train.checkpoint_every)
    check_seed(c.train.seed, "train.seed")
    return c


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
