"""Recycling dead MLP units (after ReDo, Sokar et al. 2023, "The dormant neuron phenomenon"): a
step hook that every matrix optimizer takes through its options `recycle_after` (off by default)
and `recycle_below` (optim/matrix.py; docs/neuron_death.md).

A unit is *inactive* on a step when its up-projection gradient row is exactly zero (a ReLU² unit
outside its active region on every token of the batch gets no gradient), or, with
`recycle_below` > 0, when its momentum row is below that fraction of the matrix's median
momentum row (a unit the gradient has all but left: it fires on a few tokens, or has just died).
A unit inactive for `recycle_after` optimizer steps in a row is recycled: it gets a fresh random
input row with the norm of the matrix's median row (and a fresh gate row under SwiGLU), its
output column in the down-projection is zeroed, and the momentum of all three is cleared. The
network computes the same function after a recycle when the unit was silent (its new output
weights are zero; a weak unit loses its small contribution), and it takes gradient again from
the next step.

The counting runs on the device every step; one host read per step asks whether any unit is
due, so the random draw and the copies happen only on steps that recycle, and only for the due
units. The random rows come from a generator seeded by the matrix's name and the group's
recycle step (a Python int kept in the param group, so a checkpoint carries it): every rank
draws the same.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

STATE_KEYS = ("zero_grad_steps", "recycled_units")  # kept in the up-projection's optimizer state
STEP_KEY = "recycle_steps"  # kept in each recycling param group
_MLP = re.compile(r"^(?P<prefix>.*\bmlp\.)(?P<kind>up|gate|down)\.weight$")


def mlp_units(names: Sequence[str]) -> list[tuple[str, list[str], str]]:
    """(up, [row partners: gate], down) of every MLP in a group's parameter names."""
    found: dict[str, dict[str, str]] = {}
    for name in names:
        match = _MLP.match(name)
        if match:
            found.setdefault(match["prefix"], {})[match["kind"]] = name
    complete = (parts for parts in found.values() if {"up", "down"} <= parts.keys())
    return [(parts["up"], [parts["gate"]] if "gate" in parts else [], parts["down"]) for parts in complete]


def _seed(name: str, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}:{step}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def random_rows(weight: Tensor, count: int, name: str, step: int) -> Tensor:
    """`count` random rows with the norm of `weight`'s median row, deterministic in (name, step)."""
    generator = torch.Generator(device=weight.device).manual_seed(_seed(name, step))
    rows = torch.randn((count, weight.shape[1]), generator=generator, device=weight.device, dtype=torch.float32)
    median = weight.float().norm(dim=1).median()
    return (rows * (median / rows.norm(dim=1, keepdim=True))).to(weight.dtype)


class UnitRecycling:
    """The step hook that recycles a matrix optimizer's dead MLP units. MatrixOptimizer makes one
    from its options, hands it each matrix group, and calls `after_step` at the end of every step,
    after the update, whatever the update rule.

    Its state lives in the optimizer's state dict, so a checkpoint carries it: each up-projection's
    per-unit count of inactive steps in a row and its count of recycled units (STATE_KEYS, in that
    parameter's state), and each recycling group's step (STEP_KEY, in the param group).

    Args (checked by MatrixOptimizer, as its options recycle_after and recycle_below):
        after: recycle a unit inactive for this many optimizer steps in a row (>= 1).
        below: in [0, 1); > 0 counts a unit as inactive also when its momentum row is below this
            fraction of the matrix's median momentum row (0: only a zero gradient row).
    """

    def __init__(self, after: int, below: float = 0.0):
        self.after, self.below = after, below

    def add_group(self, group: dict) -> None:
        """Take on a matrix group (torch has filled in its params and param_names): refuse one
        whose MLPs it cannot find by name or whose parameters are sharded; start its step count."""
        if not mlp_units(group.get("param_names") or []):
            raise ValueError(
                "recycle_after needs the MLP's up and down projections by name (blocks.i.mlp.up/down.weight)"
            )
        if any(isinstance(param, DTensor) for param in group["params"]):
            raise ValueError(
                "recycle_after needs replicated parameters: one process or train.parallelism=ddp, not fsdp2"
            )
        group.setdefault(STEP_KEY, 0)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """One recycle step of every group taken on."""
        for group in optimizer.param_groups:
            if STEP_KEY in group:
                group[STEP_KEY] += 1
                self.recycle(optimizer, group, group[STEP_KEY])

    @torch.no_grad()
    def recycle(self, optimizer: torch.optim.Optimizer, group: dict, step: int) -> None:
        """Count each unit of the group's MLPs as inactive or not this step, and recycle those
        inactive for `after` steps in a row (random rows drawn for recycle step `step`)."""
        by_name = dict(zip(group["param_names"], group["params"]))
        due_units = []
        for up_name, row_partners, down_name in mlp_units(group["param_names"]):
            up = by_name[up_name]
            if up.grad is None:
                continue
            state = optimizer.state[up]
            counter = state.setdefault(STATE_KEYS[0], torch.zeros(up.shape[0], dtype=torch.int32, device=up.device))
            state.setdefault(STATE_KEYS[1], torch.zeros((), dtype=torch.int64, device=up.device))
            # A matrix with no gradient at all (the first step, behind zero-initialised down-projections)
            # says nothing about its units: their counts stay.
            largest = up.grad.abs().amax(dim=1)  # one pass: a row is silent when its largest entry is 0
            informative = largest.any()
            inactive = largest == 0
            if self.below > 0:
                momentum = state["momentum_buffer"].float().norm(dim=1)
                inactive |= momentum < self.below * momentum.median()
            counter.copy_(torch.where(informative, torch.where(inactive, counter + 1, 0), counter))
            due_units.append(((up_name, row_partners, down_name), counter >= self.after))
        if not due_units or not torch.stack([due.any() for _, due in due_units]).any():  # the one host read
            return
        for (up_name, row_partners, down_name), due in due_units:
            units = due.nonzero().squeeze(1)
            if units.numel() == 0:
                continue
            up, down = by_name[up_name], by_name[down_name]
            for name in (up_name, *row_partners):
                param = by_name[name]
                param[units] = random_rows(param, units.numel(), name, step)
                _clear(optimizer.state[param], units, rows=True)
            down[:, units] = 0
            _clear(optimizer.state[down], units, rows=False)
            optimizer.state[up][STATE_KEYS[0]][units] = 0
            optimizer.state[up][STATE_KEYS[1]] += units.numel()


def _clear(state: dict, units: Tensor, rows: bool) -> None:
    """Zero the momentum of the recycled units (rows, or columns of a down-projection) and reset
    a warm-started row scaling, which is kept per unit in either orientation, to 1."""
    if "momentum_buffer" in state:
        if rows:
            state["momentum_buffer"][units] = 0
        else:
            state["momentum_buffer"][:, units] = 0
    if "row_correction" in state:
        state["row_correction"][units] = 1.0


def recycled_total(optimizer: torch.optim.Optimizer) -> Tensor | None:
    """How many units have been recycled so far, on the device; None when recycling is off."""
    counts = [state[STATE_KEYS[1]] for state in optimizer.state.values() if STATE_KEYS[1] in state]
    return torch.stack(counts).sum() if counts else None
