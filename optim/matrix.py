"""MatrixOptimizer: one optimizer object for a whole model.

Param groups come in two kinds:
- "matrix" groups hold 2-D hidden weights. Each step: lerp momentum, Nesterov, one batched
  orthogonalisation per stack of same-shaped matrices (the subclass's `update_direction`),
  a per-shape lr scale, decoupled weight decay.
- "adamw" groups hold everything else (embedding, head, gains, biases) and take AdamW.

Subclasses (optim/algorithms.py) only pick defaults and the update direction. The same class
runs on 1 rank or N: see optim/distributed.py. Unit recycling (optim/recycle.py) is a step hook
of the base, so every subclass takes it with the same options.
"""

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from .adamw import ADAMW_DEFAULTS, adamw_update, init_adamw_state
from .distributed import like_param, map_balanced_across_ranks, whole
from .polar import NS_DTYPES, POLAR_METHODS, ns_coefficients, ns_dtype
from .recycle import STATE_KEYS as RECYCLE_STATE_KEYS
from .recycle import UnitRecycling, recycled_total

MATRIX, ADAMW = "matrix", "adamw"
LR_SCALES = ("original", "match_rms_adamw", "spectral")
# Per-parameter state that is not the update rule's: the momentum and the recycling hook's counters.
NOT_RULE_STATE = ("momentum_buffer", *RECYCLE_STATE_KEYS)


def lr_scale_factor(lr_scale: str, rows: int, cols: int) -> float:
    """Per-shape multiplier on an orthogonalised update of a rows×cols matrix.

    "original" (Keller Jordan, modded-nanoGPT, torch.optim.Muon's default): sqrt(max(1, rows/cols)).
    "match_rms_adamw" (Moonlight, torch.optim.Muon's other option): 0.2·sqrt(max(rows, cols)).
    "spectral" (Dion, microsoft/dion): sqrt(rows/cols), below 1 for a wide matrix.
    """
    if lr_scale == "original":
        return math.sqrt(max(1.0, rows / cols))
    if lr_scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if lr_scale == "spectral":
        return math.sqrt(rows / cols)
    raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {lr_scale!r}")


def closure_loss(closure) -> Tensor | None:
    """torch.optim's step(closure) convention: the loss the closure recomputes, with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def require(ok: bool, argument: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{argument} must be {expected}, got {value!r}")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _param_label(group: dict, index: int) -> str:
    names = group.get("param_names")
    return names[index] if names else f"parameter {index} of a {group['kind']} group"


class MatrixOptimizer(Optimizer):
    """Base class of the matrix-optimizer family (Muon, NorMuon, UNorMuon, Aurora).

    Args:
        params: tensors, (name, tensor) pairs, or param-group dicts. A group dict may set
            kind="adamw" (with lr, betas, eps, weight_decay) for non-matrix parameters;
            otherwise it is a matrix group and takes the defaults below.
        lr: base learning rate η of matrix groups.
        momentum: μ of the lerp momentum M ← μM + (1−μ)G.
        nesterov: orthogonalise X = (1−μ)G + μM instead of M.
        weight_decay: decoupled: W ← W·(1 − ηλ) before the update.
        ns_method, ns_steps, ns_dtype: the polar iteration (optim/polar.py); ns_dtype "auto" is
            bf16 on CUDA and fp32 elsewhere (`optim.polar.ns_dtype`).
        lr_scale: "original", "match_rms_adamw" or "spectral" (see `lr_scale_factor`).
        compile: torch.compile the update-direction function.
        debug: check every gradient and update for NaN/inf (synchronises; off by default).
        recycle_after, recycle_below: off (0) by default: re-initialise an MLP unit that has been
            inactive for recycle_after steps in a row: its up-projection gradient row exactly zero,
            or (recycle_below > 0) its momentum row below recycle_below times the matrix's median
            (optim/recycle.py, a step hook). Needs the parameters by name (build_optimizer gives
            them) and replicated parameters (one process or DDP).
        rule_options: the subclass's own hyperparameters, stored in every matrix group. Any other
            keyword is refused (TypeError), so a misspelt or foreign option never passes silently.
    """

    default_kind = MATRIX

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_method: str = "simple_quintic",
        ns_steps: int | None = None,
        ns_dtype: str = "auto",
        lr_scale: str = "original",
        compile: bool = False,
        debug: bool = False,
        recycle_after: int = 0,
        recycle_below: float = 0.0,
        rule_options: dict | None = None,
    ):
        require(isinstance(compile, bool), "compile", compile, "a bool")
        require(isinstance(debug, bool), "debug", debug, "a bool")
        after_ok = isinstance(recycle_after, int) and not isinstance(recycle_after, bool) and recycle_after >= 0
        require(after_ok, "recycle_after", recycle_after, "an int >= 0 (0: off)")
        below_ok = is_number(recycle_below) and 0 <= recycle_below < 1
        require(below_ok, "recycle_below", recycle_below, "a number in [0, 1) (0: only silent units)")
        self.matrix_defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_method=ns_method,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            lr_scale=lr_scale,
            **(rule_options or {}),
        )
        self.debug = debug
        # Set to a dict before step() to receive every parameter's update direction (whole,
        # before lr and weight decay) by name: the neuron diagnostics read them. None costs nothing.
        self.captured_updates: dict[str, Tensor] | None = None
        self._direction = torch.compile(self.update_direction) if compile else self.update_direction
        # Takes on each matrix group in add_param_group, and runs at the end of every step.
        self.recycling = UnitRecycling(recycle_after, recycle_below) if recycle_after else None
        # Group defaults are filled per kind in add_param_group, so torch's own defaults stay empty.
        super().__init__(params, {})

    # --- what a subclass provides -------------------------------------------------------

    def update_direction(self, X: Tensor, group: dict, state: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Orthogonalised direction for a stack X [B, m, n] of momentum matrices (before the lr
        and its per-shape scale), and the new values of the per-parameter `state` tensors
        (stacked [B, ...], as made by `init_rule_state`)."""
        raise NotImplementedError

    def init_rule_state(self, shape: torch.Size, group: dict, device: torch.device) -> dict[str, Tensor]:
        """Extra per-parameter state of the update rule (full-matrix shaped, never sharded)."""
        return {}

    def check_rule_options(self, group: dict) -> None:
        """Raise ValueError naming any invalid subclass hyperparameter in `group`."""

    def recycled_units(self) -> Tensor | None:
        """How many MLP units recycling has re-initialised so far (on the device); None when it is
        off (optim/recycle.py)."""
        return recycled_total(self)

    def ns_dtype_used(self, device: torch.device) -> str | None:
        """The dtype the polar iteration runs in on `device` (None: no matrix group runs one)."""
        groups = (group for group in self.param_groups if group["kind"] == MATRIX)
        used = sorted({str(ns_dtype(group["ns_dtype"], device)).removeprefix("torch.") for group in groups})
        return ", ".join(used) or None

    # --- param groups -------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        kind = param_group.setdefault("kind", self.default_kind)
        if kind == MATRIX:
            for key, value in self.matrix_defaults.items():
                param_group.setdefault(key, value)
            self._check_matrix_group(param_group)
            self._check_matrix_params(param_group)
        elif kind == ADAMW:
            for key, value in ADAMW_DEFAULTS.items():
                param_group.setdefault(key, value)
            self._check_adamw_group(param_group)
        else:
            raise ValueError(f"kind must be {MATRIX!r} or {ADAMW!r}, got {kind!r}")
        super().add_param_group(param_group)
        if kind == MATRIX and self.recycling is not None:
            self.recycling.add_group(param_group)

    def _check_matrix_params(self, group: dict) -> None:
        params = group["params"]
        group["params"] = params = [params] if isinstance(params, Tensor) else list(params)
        for index, item in enumerate(params):
            name, param = item if isinstance(item, tuple) else (None, item)
            if param.ndim != 2:
                label = name or _param_label(group, index)
                raise ValueError(
                    f"{type(self).__name__} matrix groups take 2-D parameters only, "
                    f"but {label} has shape {tuple(param.shape)}"
                )

    @staticmethod
    def _check_lr(group: dict) -> None:
        lr = group.get("lr")
        require(is_number(lr) and lr >= 0, "lr", lr, "a number >= 0 (adamw groups have no default lr)")

    def _check_matrix_group(self, group: dict) -> None:
        self._check_lr(group)
        momentum = group["momentum"]
        require(is_number(momentum) and 0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
        require(isinstance(group["nesterov"], bool), "nesterov", group["nesterov"], "a bool")
        wd = group["weight_decay"]
        require(is_number(wd) and wd >= 0, "weight_decay", wd, "a number >= 0")
        require(group["ns_method"] in POLAR_METHODS, "ns_method", group["ns_method"], f"one of {POLAR_METHODS}")
        ns_coefficients(group["ns_method"], group["ns_steps"])  # validates ns_steps
        require(group["ns_dtype"] in NS_DTYPES, "ns_dtype", group["ns_dtype"], f"one of {NS_DTYPES}")
        require(group["lr_scale"] in LR_SCALES, "lr_scale", group["lr_scale"], f"one of {LR_SCALES}")
        self.check_rule_options(group)

    def _check_adamw_group(self, group: dict) -> None:
        self._check_lr(group)
        betas = tuple(group["betas"])
        require(
            len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas), "betas", betas, "two numbers in [0, 1)"
        )
        group["betas"] = betas
        require(is_number(group["eps"]) and group["eps"] >= 0, "eps", group["eps"], "a number >= 0")
        wd = group["weight_decay"]
        require(is_number(wd) and wd >= 0, "weight_decay", wd, "a number >= 0")

    # --- the step -------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        if self.debug:
            gradients = ((g, i, p.grad) for g in self.param_groups for i, p in enumerate(g["params"]))
            self._check_finite("gradient", ((g, i, grad) for g, i, grad in gradients if grad is not None))
        updates = []  # (group, index, param, direction, step size)
        for group in self.param_groups:
            group_updates = self._matrix_updates(group) if group["kind"] == MATRIX else self._adamw_updates(group)
            if self.debug:
                updates.extend(group_updates)  # applied only after every update has been checked
            else:
                self._apply(group_updates)
        if self.debug:
            self._check_finite("update", ((g, i, u) for g, i, _, u, _ in updates))
            self._apply(updates)
        # Called here, not through torch's register_step_post_hook: torch runs a post hook twice
        # when a subclass's step calls a parent's step that torch has wrapped too.
        if self.recycling is not None:
            self.recycling.after_step(self)
        return loss

    def _matrix_updates(self, group: dict):
        """Momentum for every matrix, then one orthogonalisation per same-shape stack (shared
        out across ranks by optim/distributed.py)."""
        momentum = group["momentum"]
        indices = [i for i, p in enumerate(group["params"]) if p.grad is not None]
        directions = {}
        for i in indices:
            param = group["params"][i]
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state.update(self.init_rule_state(param.shape, group, param.device))
            buffer = state["momentum_buffer"]
            buffer.lerp_(param.grad, 1 - momentum)
            directions[i] = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        by_shape: dict[tuple, list[int]] = {}
        for i in indices:
            param = group["params"][i]
            by_shape.setdefault((tuple(param.shape), param.dtype), []).append(i)
        stacks = list(by_shape.values())
        inputs = []
        for stack in stacks:
            params = [group["params"][i] for i in stack]
            rule_keys = [key for key in self.state[params[0]] if key not in NOT_RULE_STATE]
            rule_state = {key: torch.stack([self.state[p][key] for p in params]) for key in rule_keys}
            inputs.append((torch.stack([whole(directions[i]) for i in stack]), rule_state))
        results = map_balanced_across_ranks(lambda x, s: self._direction(x, group, s), inputs)
        for stack, (U, rule_state) in zip(stacks, results):
            scale = lr_scale_factor(group["lr_scale"], *U.shape[-2:])
            for j, i in enumerate(stack):
                param = group["params"][i]
                for key, value in rule_state.items():
                    self.state[param][key].copy_(value[j])
                yield group, i, param, U[j], group["lr"] * scale  # whole: _apply shards it

    def _adamw_updates(self, group: dict):
        for i, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state.update(init_adamw_state(param))
            direction, step_size = adamw_update(param.grad, state, group["lr"], group["betas"], group["eps"])
            yield group, i, param, direction, step_size

    def _apply(self, updates) -> None:
        # Matrix directions arrive whole, so capturing or checking them needs no gather under
        # FSDP2; each is sharded like its parameter only here. AdamW's already are.
        for group, index, param, direction, step_size in updates:
            if self.captured_updates is not None:
                self.captured_updates[_param_label(group, index)] = whole(direction).detach().clone()
            param.mul_(1 - group["lr"] * group["weight_decay"])
            param.add_(like_param(direction, param), alpha=-step_size)

    @staticmethod
    def _check_finite(what: str, tensors) -> None:
        for group, index, tensor in tensors:
            if not bool(torch.isfinite(whole(tensor)).all()):
                raise RuntimeError(f"non-finite {what} for {_param_label(group, index)}; parameters left unchanged")
