"""build_optimizer: a config from conf/optim/<name>.yaml plus a model → one optimizer object."""

import re
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from .algorithms import AdamW, Aurora, Muon, NorMuon, UNorMuon
from .groups import GROUP_NAMES, assign_groups
from .matrix import ADAMW

# name → (class, matrix options the name fixes)
OPTIMIZERS = {
    "adamw": (AdamW, {}),
    "muon": (Muon, {}),
    "normuon": (NorMuon, {}),
    "unormuon": (UNorMuon, {}),
    "aurora": (Aurora, {"variant": "vanilla"}),
    "riemannian_aurora": (Aurora, {"variant": "riemannian"}),
}
OBJECT_OPTIONS = ("debug", "compile")
# Keys of an optim config that describe it rather than configure the optimizer: where its settings
# come from, and the space scripts/tune.py searches.
DESCRIPTIVE_KEYS = ("source", "search")
ADAMW_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")


def _plain(cfg) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return {key: dict(value) if isinstance(value, Mapping) else value for key, value in cfg.items()}


def _adamw_group(section: str, options: dict, params) -> dict:
    unknown = sorted(set(options) - set(ADAMW_GROUP_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in optim.{section}; an AdamW group takes {ADAMW_GROUP_KEYS}")
    return {**_named(params), "kind": ADAMW, "name": section, **options}


def _named(pairs) -> dict:
    # Names given explicitly, so that an empty group (say, no biases) is still a named group.
    return {"params": [param for _, param in pairs], "param_names": [name for name, _ in pairs]}


def build_optimizer(cfg, model: nn.Module) -> Optimizer:
    """One optimizer holding every trainable parameter of `model`, grouped by optim/groups.py.

    cfg (DictConfig or dict): name, debug, compile, and one section per group (matrix, embed,
    head, scalar). A matrix optimizer takes the matrix section as its constructor options;
    for name=adamw the matrix section is one more AdamW group.
    """
    cfg = _plain(cfg)
    name = cfg.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {tuple(OPTIMIZERS)}, got {name!r}")
    unknown = sorted(set(cfg) - {"name", *OBJECT_OPTIONS, *DESCRIPTIVE_KEYS, *GROUP_NAMES})
    missing = [section for section in GROUP_NAMES if section not in cfg]
    if unknown or missing:
        raise ValueError(f"optim config for {name!r}: unknown keys {unknown}, missing sections {missing}")
    optimizer_class, fixed = OPTIMIZERS[name]
    object_options = {key: cfg[key] for key in OBJECT_OPTIONS if key in cfg}
    assigned = assign_groups(model)

    groups = [_adamw_group(section, cfg[section], assigned[section]) for section in GROUP_NAMES if section != "matrix"]
    if optimizer_class is AdamW:
        if object_options.get("compile"):
            raise ValueError("compile applies to matrix optimizers only; set optim.compile: false for adamw")
        groups.insert(0, _adamw_group("matrix", cfg["matrix"], assigned["matrix"]))
        return AdamW(groups, debug=object_options.get("debug", False))

    matrix_options = dict(cfg["matrix"])
    for key, value in fixed.items():
        if matrix_options.setdefault(key, value) != value:
            raise ValueError(
                f"optim.matrix.{key} must be {value!r} for optim.name={name!r}, got {matrix_options[key]!r}"
            )
    groups.insert(0, {**_named(assigned["matrix"]), "kind": "matrix", "name": "matrix"})
    try:
        return optimizer_class(groups, **matrix_options, **object_options)
    except TypeError as err:  # a keyword the class does not take: an option of another optimizer
        foreign = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if foreign is None:
            raise
        raise ValueError(f"optim.matrix.{foreign.group(1)} is not an option of {name}; remove it") from None
