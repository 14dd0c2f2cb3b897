"""build_optimizer: an optim config plus a model -> one optimizer object.

The config names its class in one of two ways:
- `name`, one of OPTIMIZERS: the built-ins (conf/optim/*.yaml);
- `_target_`, an import path (Hydra's convention): an optimizer brought from outside the package,
  importable from PYTHONPATH or an installed package. `name` then labels its runs. It may be
    * a MatrixOptimizer subclass (a matrix rule: it supplies only `update_direction`): built like
      the built-ins, the matrix section as its constructor options, AdamW on the other groups;
    * any other torch.optim.Optimizer: it receives the four named param groups (matrix, embed, head,
      scalar), each carrying its section's options; the matrix section's options are also its
      constructor keywords. With `takes: matrix` it receives the matrix group alone and AdamW
      (optim.AdamW) takes the other three, as the optimization track's entries split them.
docs/optimizers.md "Bring your own optimizer" has a worked example.
"""

import inspect
import re
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from .algorithms import AdamW, Aurora, Muon, NorMuon, UNorMuon
from .dion import Dion
from .groups import GROUP_NAMES, assign_groups
from .imports import import_object
from .matrix import ADAMW, MATRIX, MatrixOptimizer
from .split import SplitOptimizer

# name → (class, matrix options the name fixes)
OPTIMIZERS = {
    "adamw": (AdamW, {}),
    "muon": (Muon, {}),
    "normuon": (NorMuon, {}),
    "unormuon": (UNorMuon, {}),
    "aurora": (Aurora, {"variant": "vanilla"}),
    "riemannian_aurora": (Aurora, {"variant": "riemannian"}),
    "dion": (Dion, {}),
}
TARGET = "_target_"
OBJECT_OPTIONS = ("debug", "compile")
# Keys of an optim config that describe it rather than configure the optimizer: where its settings
# come from, and the space scripts/tune.py searches.
DESCRIPTIVE_KEYS = ("source", "search")
ADAMW_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")
# What a plug-in that is not a matrix rule receives: every group, or the matrix group alone.
TAKES = ("all", MATRIX)
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it becomes part of out_dir


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


def import_optimizer_class(path) -> type[Optimizer]:
    """The class at import path `path` (optim._target_), or ValueError naming what to fix."""
    found = import_object(path, f"optim.{TARGET}", "my_package.my_module.MyOptimizer")
    if not (isinstance(found, type) and issubclass(found, Optimizer)):
        raise ValueError(f"optim._target_={path} is not a torch.optim.Optimizer subclass (it is {found!r})")
    return found


def build_optimizer(cfg, model: nn.Module) -> Optimizer:
    """One optimizer holding every trainable parameter of `model`, grouped by optim/groups.py.

    cfg (DictConfig or dict): name (and _target_ for a plug-in), debug, compile, and one section
    per group (matrix, embed, head, scalar). A matrix optimizer takes the matrix section as its
    constructor options; for name=adamw the matrix section is one more AdamW group.
    """
    cfg = _plain(cfg)
    name = cfg.get("name")
    target = cfg.get(TARGET)
    if target is None and name not in OPTIMIZERS:
        raise ValueError(
            f"optim.name must be one of {tuple(OPTIMIZERS)}, got {name!r}; "
            f"an optimizer of your own names its class in optim.{TARGET} (docs/optimizers.md)"
        )
    if target is not None:
        optimizer_class, fixed = import_optimizer_class(target), {}
        _check_plugin_name(name)
    else:
        optimizer_class, fixed = OPTIMIZERS[name]
    plugin_keys = {TARGET, "takes"} if target is not None else set()
    unknown = sorted(set(cfg) - {"name", *OBJECT_OPTIONS, *DESCRIPTIVE_KEYS, *GROUP_NAMES, *plugin_keys})
    missing = [section for section in GROUP_NAMES if section not in cfg]
    if unknown or missing:
        raise ValueError(f"optim config for {name!r}: unknown keys {unknown}, missing sections {missing}")
    object_options = {key: cfg[key] for key in OBJECT_OPTIONS if key in cfg}
    assigned = assign_groups(model)
    if not getattr(optimizer_class, "supports_fsdp2", True) and any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError(
            f"{target} does not support FSDP2 (its class sets supports_fsdp2 = False); use train.parallelism=ddp"
        )
    if not issubclass(optimizer_class, MatrixOptimizer):
        return _build_foreign(optimizer_class, cfg, assigned, object_options)
    if "takes" in cfg:
        raise ValueError(f"optim.takes applies to optimizers that are not matrix rules; remove it for {target}")

    groups = [_adamw_group(section, cfg[section], assigned[section]) for section in GROUP_NAMES if section != MATRIX]
    if optimizer_class is AdamW:
        if object_options.get("compile"):
            raise ValueError("compile applies to matrix optimizers only; set optim.compile: false for adamw")
        groups.insert(0, _adamw_group(MATRIX, cfg[MATRIX], assigned[MATRIX]))
        return AdamW(groups, debug=object_options.get("debug", False))

    matrix_options = dict(cfg[MATRIX])
    for key, value in fixed.items():
        if matrix_options.setdefault(key, value) != value:
            raise ValueError(
                f"optim.matrix.{key} must be {value!r} for optim.name={name!r}, got {matrix_options[key]!r}"
            )
    groups.insert(0, {**_named(assigned[MATRIX]), "kind": MATRIX, "name": MATRIX})
    try:
        return optimizer_class(groups, **matrix_options, **object_options)
    except TypeError as err:  # a keyword the class does not take: an option of another optimizer
        foreign = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if foreign is None:
            raise
        raise ValueError(f"optim.matrix.{foreign.group(1)} is not an option of {name}; remove it") from None


def _check_plugin_name(name) -> None:
    if not (isinstance(name, str) and PLUGIN_NAME.match(name)):
        raise ValueError(f"optim.name must label a plug-in's runs: letters, digits, '_', '-' or '.', got {name!r}")
    if name in OPTIMIZERS:
        raise ValueError(
            f"optim.name={name} is a built-in optimizer's name; give yours its own, so reports tell them apart"
        )


def _build_foreign(optimizer_class: type[Optimizer], cfg: dict, assigned: dict, object_options: dict) -> Optimizer:
    """A torch.optim.Optimizer that is not a matrix rule: every group, or with takes=matrix the
    matrix group alone and optim.AdamW the rest (one SplitOptimizer)."""
    target, takes = cfg[TARGET], cfg.get("takes", "all")
    if takes not in TAKES:
        raise ValueError(f"optim.takes must be one of {TAKES}, got {takes!r}")
    if object_options.get("compile") or object_options.get("debug"):
        raise ValueError(f"optim.compile and optim.debug apply to matrix optimizers only; set them false for {target}")
    sections = GROUP_NAMES if takes == "all" else (MATRIX,)
    accepted = _constructor_keywords(optimizer_class)
    for section in sections:
        foreign = sorted(set(cfg[section]) - accepted) if accepted is not None else []
        if foreign:
            raise ValueError(f"optim.{section}.{foreign[0]} is not an argument of {target}; remove it")
    groups = [{**_named(assigned[section]), "name": section, **cfg[section]} for section in sections]
    try:
        plugin = optimizer_class(groups, **cfg[MATRIX])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{target} refused the options of optim.{'/'.join(sections)}: {err}") from None
    if takes == "all":
        return plugin
    rest = [_adamw_group(section, cfg[section], assigned[section]) for section in GROUP_NAMES if section != MATRIX]
    return SplitOptimizer([plugin, AdamW(rest)])


def _constructor_keywords(optimizer_class: type[Optimizer]) -> set[str] | None:
    """The keywords the class's constructor names (None: it takes **kwargs, so any)."""
    parameters = list(inspect.signature(optimizer_class.__init__).parameters.values())[1:]  # past self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}  # past params
