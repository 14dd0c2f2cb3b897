"""Composing and checking run configs: the one way every entry point turns overrides into a run.

    compose_config(overrides)      conf/ + Hydra overrides -> a resolved plain dict
    check_config(cfg)              every value checked, no file or device touched (the optimizer is
                                   built on a meta-device model), so a bad sweep point fails first;
                                   each key's own values and its role are train/schema.py's
    sweep_points(overrides)        every point of a Hydra sweep (command line and hydra.sweeper.params)

Overrides are checked before Hydra sees them, so that a typo is one `error:` line naming the key
(with the nearest known key), also when added with `+`: a key is known when some file in conf/
defines it (with the shared parts a file merges in, conf/optim_defaults/). A group option that does
not exist is named with the options there are.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from train.schema import INTEGER, POSITIVE, PROTOCOL_FREE, ConfigError, RootConfig
from train.tokenizer import padded_vocab_size

# The Hydra configs: conf/ beside the packages in a source tree (an editable install too), and
# train/conf/ in an installed wheel (pyproject.toml ships it there).
_INSTALLED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _INSTALLED_CONF if _INSTALLED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "optim", "data", "experiment")
GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_", re.MULTILINE)
# A defaults entry that merges a file from outside the group into the option (conf/optim_defaults/)
SHARED_PART = re.compile(r"^/(?P<path>[\w/]+)@_here_$")
SEARCHPATH = "hydra.searchpath"


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use: ${tokenizer_vocab:NAME} is a model's vocabulary size."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("tokenizer_vocab"):
        OmegaConf.register_new_resolver("tokenizer_vocab", padded_vocab_size)


# --- which keys exist -------------------------------------------------------------------


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.add(name)
        if isinstance(value, Mapping):
            keys |= _flat_keys(value, name + ".")
    return keys


def _file_tree(path: Path, dirs: tuple[Path, ...]) -> dict[str, Any]:
    """A config file's keys, with those of the shared parts its defaults list merges in (`/dir/name@_here_`)."""
    tree = yaml.safe_load(path.read_text()) or {}
    merged: dict[str, Any] = {}
    for entry in tree.get("defaults", []):
        shared = SHARED_PART.match(entry) if isinstance(entry, str) else None
        found = (
            [d / f"{shared['path']}.yaml" for d in dirs if (d / f"{shared['path']}.yaml").is_file()] if shared else []
        )
        if found:
            merged.update(_file_tree(found[0], dirs))
    return merged | {k: v for k, v in tree.items() if k not in ("defaults", "hydra")}


@cache
def known_keys(dirs: tuple[Path, ...] = (CONF_DIR,)) -> frozenset[str]:
    """Every config key some file in the config folders defines (a group's keys under the group's
    name; a `@package _global_` file's at the top)."""
    keys = _flat_keys(_file_tree(CONF_DIR / "config.yaml", dirs))
    for group in GROUPS:
        for path in sorted(p for d in dirs for p in (d / group).glob("*.yaml")):
            keys |= _flat_keys(_file_tree(path, dirs), "" if GLOBAL_PACKAGE.search(path.read_text()) else f"{group}.")
    return frozenset(keys)


def group_options(group: str, dirs: tuple[Path, ...] = (CONF_DIR,)) -> list[str]:
    return sorted({path.stem for d in dirs for path in (d / group).glob("*.yaml")})


def config_dirs(overrides: Sequence[str]) -> tuple[Path, ...]:
    """conf/ and the folders a `hydra.searchpath=[...]` override adds (a user's own configs, such
    as an optimizer brought from outside: docs/optimizers.md); ConfigError for one that is not a folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return _config_dirs(OverridesParser.create().parse_overrides(list(overrides)))


def _config_dirs(parsed: Sequence[Any]) -> tuple[Path, ...]:
    """config_dirs of overrides Hydra's parser has parsed."""
    entries = [str(entry) for o in parsed if o.key_or_group == SEARCHPATH for entry in (o.value() or [])]
    dirs = [Path(entry.removeprefix("file://")) for entry in entries]
    for entry, folder in zip(entries, dirs, strict=True):
        if entry.startswith("pkg://") or not folder.is_dir():
            raise ConfigError(f"{SEARCHPATH}: {entry!r} is not a folder; give config folders as file:///absolute/path")
    return (CONF_DIR, *dirs)


def with_config_dir(overrides: Sequence[str], config_dir: str) -> list[str]:
    """`overrides` with Hydra's --config-dir folder added to hydra.searchpath, so that checking and
    composing before Hydra starts see the same configs as the run."""
    folder = f"file://{Path(config_dir).resolve()}"
    given = [o for o in overrides if o.startswith(f"{SEARCHPATH}=")]
    if not given:
        return [*overrides, f"{SEARCHPATH}=[{folder}]"]
    rest = [o for o in overrides if o not in given]
    return [*rest, f"{given[-1].removesuffix(']')},{folder}]"]


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse an override whose key no config file defines (with or without `+`), and a group
    option that does not exist, each in one line naming what to fix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(_one_line(str(err))) from None
    dirs = _config_dirs(parsed)  # parsed once, above
    for override in parsed:
        key = override.key_or_group
        if key.startswith(("hydra.", "hydra/")) or key == "hydra" or override.is_delete():
            continue
        if key.startswith("observers."):  # names the user chooses; the run checks each import path
            continue
        if key in GROUPS:
            options = group_options(key, dirs)
            values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
            for value in values:
                if value is not None and str(value) not in options and str(value) != "null":
                    raise ConfigError(f"{key}={value}: no such option; {key} options are {', '.join(options)}")
            continue
        if key not in known_keys(dirs):
            near = difflib.get_close_matches(key, sorted(known_keys(dirs)), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            folders = ", ".join(["conf/", *(str(d) for d in dirs[1:])])
            raise ConfigError(f"unknown config key {key!r}{hint}; no file in {folders} defines it")


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return "; ".join(line for line in lines if not line.startswith("Set the environment variable HYDRA_FULL_ERROR"))


# --- composing ------------------------------------------------------------------------


def _compose(overrides: Sequence[str]):
    """The composed config for `overrides`, unresolved, with its `hydra` node (the composition's
    record: which option of each group it chose, hydra.runtime.choices)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    register_resolvers()
    try:
        if GlobalHydra.instance().is_initialized():  # inside `python -m train`: Hydra already reads conf/
            return compose("config", overrides=list(overrides), return_hydra_config=True)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_composition_error(str(err))) from None


def _composition_error(message: str) -> str:
    absent = re.match(r"Could not override '([^']+)'", message)
    if absent:  # a key of another option of its group (say, an Aurora option with optim=muon)
        return (
            f"{absent.group(1)} is not a key of the options chosen for this run "
            "(another option of its group defines it); remove it or choose that option"
        )
    return _one_line(message)


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config for `overrides`, as a plain dict. `${hydra:...}` resolves against this
    composition, as it does in the run Hydra starts: `${hydra:runtime.choices.optim}`, the optim
    option given (aurora_wide, where optim.name is aurora), names run directories."""
    from omegaconf import OmegaConf, open_dict

    cfg = _compose(overrides)
    with _hydra_config_of(cfg):
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)


def chosen_options(overrides: Sequence[str] = ()) -> dict[str, str]:
    """Which option of each config group the composition of `overrides` chose (Hydra's
    runtime.choices): {"optim": "aurora_wide", ...} where optim.name is aurora."""
    return dict(_compose(overrides)["hydra"]["runtime"]["choices"])


@contextmanager
def _hydra_config_of(cfg):
    """Hydra's global HydraConfig (what `${hydra:...}` reads) set to composed `cfg`'s hydra node,
    then put back: compose() leaves it unset, and inside a running Hydra job it is that job's."""
    from hydra.core.hydra_config import HydraConfig

    holder = HydraConfig.instance()
    previous = holder.cfg
    holder.set_config(cfg)
    try:
        yield
    finally:
        holder.cfg = previous


def model_preset(name: str, data: str = "shakespeare") -> dict[str, Any]:
    """A conf/model preset as a run with `data` composes it (its vocabulary follows the data's
    tokenizer); an unknown name is one error naming the presets."""
    return compose_config([f"model={name}", f"data={data}"])["model"]


def recipe_sweep(overrides: Sequence[str]) -> dict[str, str]:
    """`hydra.sweeper.params` of the composed config: the sweep a recipe declares."""
    from omegaconf import OmegaConf

    params = _compose(overrides).hydra.sweeper.params
    return OmegaConf.to_container(params, resolve=False) if params else {}


def sweep_points(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of a Hydra sweep as its own override list: sweeps from the command line
    (`a,b,c`, ranges) and from `hydra.sweeper.params` of the composed config (as recipes set
    them; a key given on the command line replaces the recipe's list)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    check_overrides(overrides)
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    recipe = recipe_sweep(fixed)
    given = {o.key_or_group for o in parsed}
    from_recipe = [f"{key}={value}" for key, value in recipe.items() if key not in given]
    combined = parser.parse_overrides(from_recipe + list(overrides))
    return [point for batch in BasicSweeper.split_arguments(combined, None) for point in batch]


def compose_sweep(overrides: Sequence[str], world_size: int = 1) -> list[tuple[list[str], dict[str, Any]]]:
    """(overrides, checked config) of every sweep point, all composed and checked before any runs;
    two points that would share an out_dir are refused."""
    composed, out_dirs = [], {}
    points = sweep_points(overrides)
    for number, point in enumerate(points, 1):
        try:
            cfg = compose_config(point)
            check_config(cfg, world_size)
        except ValueError as err:
            raise ConfigError(f"sweep point {number} of {len(points)} ({' '.join(point)}): {err}") from None
        if cfg["out_dir"] in out_dirs:
            raise ConfigError(
                f"sweep points {out_dirs[cfg['out_dir']]} and {point} share out_dir {cfg['out_dir']!r}; "
                "put the swept keys into out_dir, e.g. 'out_dir=runs/sweep/${hydra:runtime.choices.optim}-seed${seed}'"
            )
        out_dirs[cfg["out_dir"]] = point
        composed.append((point, cfg))
    return composed


# --- checking values ---------------------------------------------------------------------


def accumulation_steps(batch_tokens: int, micro_batch: int, seq_len: int, world_size: int) -> int:
    per_pass = micro_batch * seq_len * world_size
    if not POSITIVE.accepts(batch_tokens) or batch_tokens % per_pass:
        raise ConfigError(
            f"train.batch_tokens={batch_tokens} must be a positive multiple of "
            f"world_size x train.micro_batch x train.seq_len = {world_size} x {micro_batch} x {seq_len} = {per_pass}"
        )
    return batch_tokens // per_pass


def check_config(cfg: Mapping[str, Any], world_size: int = 1) -> None:
    """Every value of a composed config that can be checked without data, devices or a run
    directory; raises ConfigError (or the module's own ValueError) naming the key. Each key's own
    values are the schema's (train/schema.py); what depends on several keys is checked here."""
    import torch

    from model import build_model
    from optim import build_optimizer
    from train.data import check_data_config

    root = RootConfig.from_dict(cfg)
    train, diag = root.train, root.diagnostics
    if train.warmup_frac + train.decay_frac > 1.0:
        raise ConfigError("train.warmup_frac + train.decay_frac must be at most 1")
    accumulation_steps(train.batch_tokens, train.micro_batch, train.seq_len, world_size)
    check_data_config(cfg["data"])
    if diag.trace_every and world_size > 1:
        raise ConfigError("diagnostics.trace_every reads whole weights and optimizer state: run it in one process")
    if diag.every and not (INTEGER.accepts(diag.probe_tokens) and diag.probe_tokens >= train.seq_len):
        raise ConfigError(f"diagnostics.probe_tokens must be at least train.seq_len, got {diag.probe_tokens!r}")
    with torch.device("meta"):  # shapes only: a 1B model costs nothing here
        model = build_model(cfg["model"])
    build_optimizer(cfg["optim"], model)
    check_protocol(cfg)


def protocol_changes(cfg: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (the protocol's value, this config's)} for every pinned key that differs from the
    recipe named by protocol.name; {} for a run under no protocol."""
    from train.rundir import config_changes

    name = cfg["protocol"]["name"]
    if not name:
        return {}
    reference = compose_config([f"experiment={name}"])
    return {k: v for k, v in config_changes(reference, dict(cfg)).items() if not k.startswith(PROTOCOL_FREE)}


def check_protocol(cfg: Mapping[str, Any]) -> None:
    """Refuse a change to what the protocol pins, unless protocol.unofficial is set."""
    protocol = cfg["protocol"]
    changed = protocol_changes(cfg)
    if changed and not protocol["unofficial"]:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ConfigError(
            f"experiment={protocol['name']} fixes everything but the optimizer, its config, its lr schedule "
            "and the seed; "
            f"changed: {listed}; add protocol.unofficial=true to run it anyway (its record will say unofficial)"
        )
