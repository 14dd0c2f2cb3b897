"""The training loop: `train(cfg)` builds the run (train/run.py), resumes it, and takes its steps
(`train_step`), saving checkpoints on the way. It knows no concrete model preset, optimizer, data
source or observer: each comes from its config group or the `observers` section.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from optim.distributed import mean_over_ranks
from train import metric_names as names
from train.checkpoint import checkpoint_path, rng_state, save_checkpoint
from train.cli import Diverged, RunStopped
from train.diagnostics import CAPTURED_UPDATES, captured_updates, measured_matrices
from train.dist import DeviceTimer, autocast_context, gradient_sync
from train.run import Run, build_run, resume
from train.schedule import lr_scale

# A run directory refuses an lr change (train/rundir.py), so a lower lr needs a new one.
DIVERGED_ADVICE = (
    "start a new out_dir with a lower lr, or resume this one with train.max_skipped_steps=N to skip up to N such steps"
)


def train(cfg: dict[str, Any]) -> Path:
    """Train (or resume) the run `cfg` describes; returns its run directory.

    Stops with CheckpointError, RunDirError, ConfigError or DataError (bad input, exit 2),
    Diverged (exit 3) or RunStopped (a signal: exit 75 after a checkpoint); train/cli.py gives
    the codes.
    """
    return train_run(build_run(cfg))


def train_run(run: Run) -> Path:
    """Resume `run` and take its steps to train.steps; returns its run directory."""
    tcfg = run.cfg["train"]
    total = tcfg["steps"]
    try:
        with run.stop:
            resume(run)
            if run.state.step >= total:
                run.metrics.message(f"{run.dir.path} is already complete at step {total}; nothing to do")
            for step in range(run.state.step + 1, total + 1):
                stopping = train_step(run, step)
                if step == total or stopping or (tcfg["checkpoint_every"] and step % tcfg["checkpoint_every"] == 0):
                    save(run, step)
                if stopping and step < total:
                    raise RunStopped(
                        f"asked to stop (SIGTERM or SIGINT) at step {step} of {total}; saved "
                        f"{run.dir.checkpoint_dir / run.state.last_saved}; run the same command again to resume"
                    )
    finally:
        run.close()
    return run.dir.path


def train_step(run: Run, step: int) -> bool:
    """One step: the gradients of the step's micro-batches, the update (skipped when the loss or
    the gradient norm is not finite, up to train.max_skipped_steps), the observers that want the
    step, and its record in metrics.jsonl. Returns whether any rank was asked to stop."""
    started = time.perf_counter()
    loss_sum = accumulate_gradients(run)
    train_loss, norm, stopping = step_scalars(loss_sum, grad_norm(run.model), run.stop.received is not None)
    observers = [observer for observer in run.observers.values() if observer.wants(step)]
    for observer in observers:
        observer.before_step(step)
    applied = math.isfinite(train_loss) and math.isfinite(norm)
    if not applied:
        skip_update(run, step, train_loss, norm)
        observers = [observer for observer in observers if CAPTURED_UPDATES not in observer.needs]  # no update
    capture = any(CAPTURED_UPDATES in observer.needs for observer in observers)
    matrices = measured_matrices(run.model) if capture else None
    optimizer_timer, updates = apply_update(run.optimizer, run.runtime.device, matrices) if applied else (None, None)
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.runtime.device.type == "cuda":
        torch.cuda.synchronize()  # the step's time, and the optimizer timer's events, are complete only now
    step_time = time.perf_counter() - started
    run.state.step, run.state.elapsed_s = step, run.state.elapsed_s + step_time
    record = step_record(run, train_loss, norm, step_time, optimizer_timer.ms() if optimizer_timer else 0.0)
    for observer in observers:
        observer.after_step(step, record, updates)
    run.metrics.log(record)
    return stopping


def accumulate_gradients(run: Run) -> torch.Tensor:
    """Forward and backward over the step's micro-batches, the gradient sync on the last one
    only; returns this rank's loss of the step, on the device."""
    device, precision, accumulation = run.runtime.device, run.cfg["train"]["precision"], run.accumulation
    loss_sum = torch.zeros((), device=device)
    for micro in range(accumulation):
        inputs, targets = (t.to(device) for t in run.loader.next_batch())
        with gradient_sync(run.trained, enabled=micro == accumulation - 1):
            with autocast_context(precision, device):
                loss = run.trained(inputs, targets) / accumulation
            loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def apply_update(
    optimizer: torch.optim.Optimizer, device: torch.device, matrices: Mapping[str, torch.Tensor] | None
) -> tuple[DeviceTimer, dict[str, torch.Tensor] | None]:
    """optimizer.step(), timed on the device, and with `matrices` (an observer of the step needs
    CAPTURED_UPDATES) the updates it applied, by parameter name (train/diagnostics.py
    captured_updates), else None."""
    capture = captured_updates(optimizer, matrices) if matrices is not None else nullcontext()
    with capture as updates:
        with DeviceTimer(device) as timer:
            optimizer.step()
    return timer, updates


def skip_update(run: Run, step: int, train_loss: float, norm: float) -> None:
    """Count a step whose loss or gradient is not finite, or stop the run when the budget of
    train.max_skipped_steps is spent."""
    budget = run.cfg["train"]["max_skipped_steps"]
    run.state.skipped_steps += 1
    if run.state.skipped_steps > budget:
        raise Diverged(
            f"the run diverged at step {step}: train loss {train_loss}, grad norm {norm}; the update was not "
            f"applied and nothing was saved after the last good checkpoint ({run.state.last_saved or 'none'}); "
            f"{DIVERGED_ADVICE}"
        )
    run.metrics.message(
        f"step {step}: train loss {train_loss}, grad norm {norm}: update skipped "
        f"({run.state.skipped_steps} of at most {budget})"
    )


def step_record(run: Run, train_loss: float, norm: float, step_time: float, optimizer_ms: float) -> dict[str, Any]:
    """The step's line of metrics.jsonl before the observers add theirs."""
    tcfg, state = run.cfg["train"], run.state
    record = {
        names.STEP: state.step,
        names.TOTAL_STEPS: tcfg["steps"],
        names.TOKENS: state.step * tcfg["batch_tokens"],
        names.TRAIN_LOSS: train_loss,
        names.GRAD_NORM: norm,
        names.LR_SCALE: lr_scale(state.step - 1, tcfg["steps"], tcfg["warmup_frac"], tcfg["decay_frac"]),
        names.TOKENS_PER_S: tcfg["batch_tokens"] / step_time,
        names.OPTIM_STEP_MS: optimizer_ms,
        names.ELAPSED_S: state.elapsed_s,
    }
    if state.skipped_steps or tcfg["max_skipped_steps"]:
        record[names.SKIPPED_STEPS] = state.skipped_steps
    return record


def save(run: Run, step: int) -> None:
    """A checkpoint of the run after `step`, on every rank; refused (Diverged) when a parameter
    is not finite, so that no checkpoint ever holds one."""
    if not parameters_finite(run.model):
        raise Diverged(
            f"the parameters are not finite after step {step}; nothing was saved "
            f"(last good checkpoint: {run.state.last_saved or 'none'}); {DIVERGED_ADVICE}"
        )
    meta = {
        "run_state": asdict(replace(run.state, last_saved=checkpoint_path(run.dir.checkpoint_dir, step).name)),
        "config": run.cfg,
        "scheduler": run.scheduler.state_dict(),
        "loader": run.loader.state_dict(),
        "rng": rng_state(),
        "observers": {name: observer.state_dict() for name, observer in run.observers.items()},
    }
    run.metrics.sync()  # every step logged so far is on disk before the checkpoint that covers it
    for observer in run.observers.values():
        observer.save()
    keep = run.cfg["train"]["keep_checkpoints"]
    path = save_checkpoint(run.dir.checkpoint_dir, step, run.model, run.optimizer, meta, keep)
    run.state.last_saved = path.name
    run.metrics.message(f"saved {path}")


def grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (whole, also when FSDP2 shards them), on the device."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(model.parameters()).device)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def parameters_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite on every rank (one host sync: checked before saving)."""
    bad = torch.zeros((), device=next(model.parameters()).device)
    for param in model.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        bad += (~torch.isfinite(local)).sum()
    return mean_over_ranks(bad).item() == 0


def step_scalars(loss_sum: torch.Tensor, norm: torch.Tensor, stop: bool) -> tuple[float, float, bool]:
    """(mean loss over ranks, grad norm, whether any rank was asked to stop): one all-reduce and
    one host sync per step, so that every rank takes the same decision at the same step."""
    packed = torch.stack([loss_sum.float(), norm.float(), torch.tensor(float(stop), device=loss_sum.device)])
    loss, norm_value, stops = mean_over_ranks(packed).tolist()
    return loss, norm_value, stops > 0
