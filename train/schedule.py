"""The lr schedule and the validation schedule: when each step's lr and each validation fall, and
which changes of train.steps a resumed run may take."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_scale(step: int, total: int, warmup_frac: float, decay_frac: float) -> float:
    """Linear warmup, constant, then linear decay to zero at `total` (step counts from 0).

    Warmup and decay last int(frac * total) steps; either may be 0 steps long (no warmup; a
    constant lr to the end). Step `total` itself, which the scheduler reaches after the last
    update, is 0 when there is a decay and 1 otherwise.
    """
    warmup, decay = int(warmup_frac * total), int(decay_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: dict[str, Any]) -> LambdaLR:
    """The `train` section's lr schedule (`lr_scale`) over the optimizer's base lrs."""
    scale = partial(lr_scale, total=tcfg["steps"], warmup_frac=tcfg["warmup_frac"], decay_frac=tcfg["decay_frac"])
    return LambdaLR(optimizer, scale)


def follow_schedule(scheduler: LambdaLR, optimizer: torch.optim.Optimizer) -> None:
    """Give each group the lr this launch's schedule sets for the next step (LambdaLR's own
    formula). A checkpoint holds the lr its launch's schedule set, which differs once train.steps
    has grown: the decay moves later."""
    for group, scale, base_lr in zip(optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * scale(scheduler.last_epoch)


def validation_due(step: int, tcfg: dict[str, Any]) -> bool:
    """Validate at the last step, every val_every steps, and in the last val_late_frac of the
    run every val_every_late steps (the optimization track: every 125, every 25 at the end)."""
    total = tcfg["steps"]
    late = tcfg["val_every_late"] and step > total - int(tcfg["val_late_frac"] * total)
    every = tcfg["val_every_late"] if late else tcfg["val_every"]
    return step == total or bool(every and step % every == 0)


def schedule_change_problem(old_total: int, tcfg: dict[str, Any], resume_step: int) -> str | None:
    """Why train.steps cannot change from old_total to tcfg["steps"] for a run resumed at
    `resume_step`, or None. The warmup and decay phases scale with the total, so the change is
    allowed only when the new schedule gives every step already run the lr it ran at (a constant
    lr; or a resume from before either schedule's decay, and no warmup to move)."""
    new_total = tcfg["steps"]
    if new_total < resume_step:
        return f"train.steps={new_total} is below step {resume_step}, which the run has already reached"
    for step in range(resume_step):
        old = lr_scale(step, old_total, tcfg["warmup_frac"], tcfg["decay_frac"])
        new = lr_scale(step, new_total, tcfg["warmup_frac"], tcfg["decay_frac"])
        if old != new:
            return (
                f"train.steps {old_total} -> {new_total} would change the lr schedule of steps already run "
                f"(step {step + 1} ran at lr scale {old:.4g}; the new schedule gives {new:.4g}), because warmup and "
                f"decay scale with train.steps; extend runs with a constant lr (train.decay_frac=0) or from a "
                f"checkpoint before the decay, or start a new out_dir"
            )
    return None
