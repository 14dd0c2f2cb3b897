"""The root config's schema: each key's type, the values it accepts, and its role.

A key's role says what changing it does; every rule about config keys derives from it:

    NUMBERS      changes the run's numbers (its losses): refused when a run resumes, a setting that
                 tells runs apart in reports, pinned by a benchmark protocol unless the protocol frees it
                 (the optimizer, its config, its lr schedule, the seed, micro_batch)
    EXECUTION    only where and how the run executes (device, threads, checkpoints, where it writes):
                 may change on resume (the launch records it), never a setting, free under a protocol
                 but for train.max_skipped_steps (whether a record may skip a step)
    OBSERVATION  only what the run measures, logs or reports: as EXECUTION; a protocol pins how its
                 target is measured (the validation cadence)
    DESCRIPTION  what the run is called and what it claims (its recipe, protocol, the source of its
                 settings): fixed for the run's life, never a setting

Sections are frozen dataclasses (like model.GPTConfig) whose fields carry a `Key` in their metadata:
its role, the values it accepts (checked on construction, in one `error:`-style line naming the key),
what a run made before the key existed had (its legacy default), and whether a protocol frees it.
model.* change the numbers (GPTConfig checks them); optim.* change the numbers except
OPTIMIZER_KEYS, and optim/ checks them.

Derived here, for train/rundir.py, train/config.py and eval/runs.py, as prefixes for str.startswith
(a whole section as "name." where all its keys share the answer):
    RESUMABLE_CHANGES   keys a resumed run may change
    PROTOCOL_FREE       keys a benchmark protocol leaves free
    NOT_SETTINGS        keys that never tell two runs apart in reports
    LEGACY_DEFAULTS     {key: value} for keys added after runs were made (LEGACY_OPTIM_DEFAULTS per optimizer)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from train.dist import PARALLELISMS

WANDB_MODES = ("disabled", "offline", "online")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """An override or config value that cannot make a run."""


class Role(enum.Enum):
    """What changing a key does (the module docstring says what follows from each)."""

    NUMBERS = "changes the run's numbers"
    EXECUTION = "only how the run executes"
    OBSERVATION = "only what the run observes"
    DESCRIPTION = "what the run is called and claims"


NUMBERS, EXECUTION, OBSERVATION, DESCRIPTION = Role


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Valid:
    """The values a key accepts; `expected` completes "KEY must be ..." in its error."""

    accepts: Callable[[Any], bool]
    expected: str


def count(zero: str = "") -> Valid:
    """An integer >= 0; `zero` says what 0 means."""
    return Valid(lambda v: _is_int(v) and v >= 0, "an integer >= 0" + (f" ({zero})" if zero else ""))


def one_of(choices: tuple[str, ...]) -> Valid:
    return Valid(lambda v: v in choices, f"one of {choices}")


def optional(valid: Valid) -> Valid:
    return Valid(lambda v: v is None or valid.accepts(v), f"{valid.expected} or null")


INTEGER = Valid(_is_int, "an integer")
POSITIVE = Valid(lambda v: _is_int(v) and v > 0, "a positive integer")
FRACTION = Valid(lambda v: isinstance(v, (int, float)) and 0.0 <= v <= 1.0, "in [0, 1]")
BOOLEAN = Valid(lambda v: isinstance(v, bool), "true or false")

NO_LEGACY = object()


@dataclass(frozen=True)
class Key:
    """What a config key is: its role, the values it accepts (None: checked elsewhere, or anything),
    its legacy default (NO_LEGACY: every run has had the key), and whether a benchmark protocol
    leaves it free (None: by its role)."""

    role: Role
    valid: Valid | None = None
    legacy: Any = NO_LEGACY
    free: bool | None = None

    @property
    def has_legacy(self) -> bool:
        return self.legacy is not NO_LEGACY

    @property
    def protocol_free(self) -> bool:
        return self.free if self.free is not None else self.role in (EXECUTION, OBSERVATION)


def spec(role: Role, valid: Valid | None = None, *, legacy: Any = NO_LEGACY, free: bool | None = None) -> dict:
    """A field's metadata: its Key."""
    return {"key": Key(role, valid, legacy, free)}


def _check(prefix: str, obj: Any) -> None:
    for f in fields(obj):
        valid = f.metadata["key"].valid if "key" in f.metadata else None
        value = getattr(obj, f.name)
        if valid is not None and not valid.accepts(value):
            raise ConfigError(f"{prefix}{f.name} must be {valid.expected}, got {value!r}")


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Refuse `values` unless they hold exactly the dataclass's fields."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    missing = [name for name in names if name not in values]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing keys {missing}")


@dataclass(frozen=True)
class Section:
    """A section of the root config; its values are checked on construction."""

    prefix: ClassVar[str]

    def __post_init__(self) -> None:
        _check(f"{self.prefix}.", self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Section:
        _check_keys(cls, values, f"config section {cls.prefix}")
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig(Section):
    prefix = "train"
    steps: int = field(metadata=spec(NUMBERS, POSITIVE, free=True))  # the lr schedule is the optimizer's
    # a multiple of the world's micro-batch: config.accumulation_steps checks it
    batch_tokens: int = field(metadata=spec(NUMBERS))
    micro_batch: int = field(metadata=spec(NUMBERS, POSITIVE, free=True))  # the summation order only: fit it to memory
    seq_len: int = field(metadata=spec(NUMBERS, POSITIVE))
    warmup_frac: float = field(metadata=spec(NUMBERS, FRACTION, free=True))
    decay_frac: float = field(metadata=spec(NUMBERS, FRACTION, free=True))
    # The validation cadence is how a protocol finds a record's first passing step: pinned there.
    val_every: int = field(metadata=spec(OBSERVATION, count(), free=False))
    val_every_late: int = field(metadata=spec(OBSERVATION, count(), legacy=0, free=False))
    val_late_frac: float = field(metadata=spec(OBSERVATION, FRACTION, legacy=0.1, free=False))
    log_every: int = field(metadata=spec(OBSERVATION, count()))
    checkpoint_every: int = field(metadata=spec(EXECUTION, count()))
    keep_checkpoints: int | None = field(metadata=spec(EXECUTION, optional(POSITIVE)))
    # Only what a non-finite step does; pinned by a protocol, so that a record does not skip its way through.
    max_skipped_steps: int = field(metadata=spec(EXECUTION, count(), legacy=0, free=False))
    device: str = field(metadata=spec(EXECUTION, one_of(DEVICES)))
    precision: str = field(metadata=spec(NUMBERS, one_of(PRECISIONS)))
    compile: bool = field(metadata=spec(EXECUTION))
    deterministic: bool = field(metadata=spec(NUMBERS))
    threads: int | None = field(metadata=spec(EXECUTION, optional(POSITIVE)))  # float rounding at the 1e-7 level
    parallelism: str = field(metadata=spec(EXECUTION, one_of(PARALLELISMS)))
    timeout_s: float = field(metadata=spec(EXECUTION))


@dataclass(frozen=True)
class DataConfig(Section):
    """train/data.py checks these values (check_data_config)."""

    prefix = "data"
    name: str = field(metadata=spec(NUMBERS))
    tokenizer: str = field(metadata=spec(NUMBERS, legacy="gpt2"))
    dir: str = field(metadata=spec(EXECUTION))  # where the shards are; their manifest pins what they hold
    train_pattern: str = field(metadata=spec(NUMBERS))
    val_pattern: str = field(metadata=spec(NUMBERS))
    val_tokens: int = field(metadata=spec(NUMBERS))  # the val loss itself
    verify_checksums: bool = field(metadata=spec(EXECUTION, legacy=True))


@dataclass(frozen=True)
class DiagnosticsConfig(Section):
    """Neuron diagnostics and unit traces (docs/neuron_death.md): they read the model, never change it."""

    prefix = "diagnostics"
    every: int = field(metadata=spec(OBSERVATION, count("0: off")))
    probe_tokens: int = field(metadata=spec(OBSERVATION))  # at least train.seq_len when on: check_config
    starvation_window: int = field(metadata=spec(OBSERVATION, POSITIVE))
    histogram_steps: list[int] = field(metadata=spec(OBSERVATION))
    trace_every: int = field(metadata=spec(OBSERVATION, count("0: off"), legacy=0))


@dataclass(frozen=True)
class EvalConfig(Section):
    prefix = "eval"
    hellaswag_every: int = field(metadata=spec(OBSERVATION, count("0: never")))
    hellaswag_examples: int = field(metadata=spec(OBSERVATION, POSITIVE))
    hellaswag_data_path: str | None = field(metadata=spec(OBSERVATION))


@dataclass(frozen=True)
class ProtocolConfig(Section):
    """A benchmark's fixed setting (docs/benchmark.md); config.check_protocol applies it."""

    prefix = "protocol"
    name: str | None = field(metadata=spec(DESCRIPTION, legacy=None))
    target: float | None = field(metadata=spec(DESCRIPTION, legacy=None))
    unofficial: bool = field(metadata=spec(DESCRIPTION, BOOLEAN, legacy=False, free=True))  # the record says so


@dataclass(frozen=True)
class WandbConfig(Section):
    prefix = "wandb"
    mode: str = field(metadata=spec(OBSERVATION, one_of(WANDB_MODES)))
    project: str = field(metadata=spec(OBSERVATION))
    entity: str | None = field(metadata=spec(OBSERVATION))
    group: str | None = field(metadata=spec(OBSERVATION))
    tags: list[str] = field(metadata=spec(OBSERVATION))


@dataclass(frozen=True)
class RootConfig:
    """The typed view of a composed config (RootConfig.from_dict); model and optim stay mappings,
    checked by model.GPTConfig and optim.build_optimizer."""

    seed: int = field(metadata=spec(NUMBERS, INTEGER, free=True))
    out_dir: str = field(metadata=spec(EXECUTION))  # so that a moved or copied run directory still resumes
    recipe: str | None = field(metadata=spec(DESCRIPTION, legacy=None))
    train: TrainConfig
    data: DataConfig
    diagnostics: DiagnosticsConfig
    eval: EvalConfig
    protocol: ProtocolConfig
    wandb: WandbConfig
    model: dict[str, Any] = field(metadata=spec(NUMBERS))
    optim: dict[str, Any] = field(metadata=spec(NUMBERS, free=True))  # but OPTIMIZER_KEYS
    observers: dict[str, str] = field(metadata=spec(OBSERVATION))  # name -> import path of an observer class

    def __post_init__(self) -> None:
        _check("", self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> RootConfig:
        """The typed view of a composed config; ConfigError names an invalid, unknown or missing key."""
        _check_keys(cls, cfg, "config")
        return cls(
            **{
                f.name: SECTIONS[f.name].from_mapping(cfg[f.name]) if f.name in SECTIONS else cfg[f.name]
                for f in fields(cls)
            }
        )


SECTIONS: dict[str, type[Section]] = {
    section.prefix: section
    for section in (TrainConfig, DataConfig, DiagnosticsConfig, EvalConfig, ProtocolConfig, WandbConfig)
}

# Keys of an optim config that do not change the optimizer's arithmetic (the rest do). A protocol
# leaves every optim key free.
OPTIMIZER_KEYS = {
    "debug": Key(EXECUTION, free=True),  # NaN/inf checks: raise where the numbers would be non-finite anyway
    "compile": Key(EXECUTION, free=True),  # as train.compile
    "source": Key(DESCRIPTION, free=True),  # where its settings come from
    "search": Key(DESCRIPTION, free=True),  # the space scripts/tune.py samples
}
# Optimizer options added since, per optimizer (optim.name): an older run of it had these values.
LEGACY_OPTIM_DEFAULTS = {
    ("aurora", "riemannian_aurora"): {
        "optim.matrix.pp_row_floor": 0.0,
        "optim.matrix.recycle_after": 0,
        "optim.matrix.recycle_below": 0.0,
        "optim.matrix.pp_leverage": "polar",
    },
    ("normuon", "unormuon"): {"optim.matrix.normalize": "rows"},
}


def _schema_keys() -> dict[str, Key]:
    keys = {}
    for f in fields(RootConfig):
        if f.name in SECTIONS:
            keys.update({f"{f.name}.{inner.name}": inner.metadata["key"] for inner in fields(SECTIONS[f.name])})
        else:
            keys[f.name] = f.metadata["key"]
    keys.update({f"optim.{name}": optim_key for name, optim_key in OPTIMIZER_KEYS.items()})
    return keys


# Every key the schema knows: a section's key as "section.name"; a mapping-valued key (model, optim,
# observers) stands for every key under it, except where one of those has its own entry (optim.debug).
SCHEMA_KEYS = _schema_keys()
MAPPINGS = tuple(f.name for f in fields(RootConfig) if f.type.startswith("dict"))


def key_of(name: str) -> Key | None:
    """The Key of a dotted config key, e.g. train.steps, or optim.search.matrix.lr.low (optim.search's);
    None for a key the schema does not know."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        found = SCHEMA_KEYS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def keys_where(wanted: Callable[[Key], bool]) -> tuple[str, ...]:
    """The keys whose Key is `wanted`, as prefixes for str.startswith: a section or a mapping whose
    keys all are, as "name." (so that it also covers keys added to it later)."""
    chosen = [name for name, found in SCHEMA_KEYS.items() if wanted(found)]
    prefixes = []
    for group in (*SECTIONS, *MAPPINGS):
        inside = [name for name in SCHEMA_KEYS if name == group or name.startswith(group + ".")]
        if all(name in chosen for name in inside):
            prefixes.append(group + ".")
            chosen = [name for name in chosen if name not in inside]
    if set(chosen) & set(MAPPINGS):
        raise ValueError(f"a mapping and only some of its keys: not expressible as prefixes ({chosen})")
    return (*prefixes, *chosen)


RESUMABLE_CHANGES = keys_where(lambda k: k.role in (EXECUTION, OBSERVATION))
PROTOCOL_FREE = keys_where(lambda k: k.protocol_free)
NOT_SETTINGS = ("seed", *keys_where(lambda k: k.role is not NUMBERS))  # reports give the seed its own column
LEGACY_DEFAULTS = {name: k.legacy for name, k in SCHEMA_KEYS.items() if k.has_legacy}
