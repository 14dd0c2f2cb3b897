"""The training loop. It knows no concrete model preset, optimizer or data source:
each comes from its config group through one builder.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from eval.hellaswag import load_subset, quick_score
from model import build_model
from optim import build_optimizer
from train.checkpoint import (
    CheckpointError,
    describe,
    load_checkpoint,
    newest_intact,
    read_meta,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    set_aside,
)
from train.cli import Diverged, RunStopped
from train.config import accumulation_steps, check_config
from train.data import TokenLoader, resolve_shards, validation_batch_count, validation_batches
from train.diagnostics import NeuronDiagnostics, probe_batch
from train.dist import DeviceTimer, Runtime, autocast_context, gradient_sync, init_runtime, parallelize, set_determinism
from train.metrics import Metrics, logged_through, read_metrics
from train.rundir import RunDir, RunDirError
from train.signals import StopSignals
from train.tokenizer import get_tokenizer
from train.unit_trace import UnitTracer

# A run directory refuses an lr change (train/rundir.py), so a lower lr needs a new one.
DIVERGED_ADVICE = (
    "start a new out_dir with a lower lr, or resume this one with train.max_skipped_steps=N to skip up to N such steps"
)


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


def mean_over_ranks(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The mean of `value` over ranks (itself on one process), on its device; SUM then divide,
    since gloo has no AVG."""
    if runtime.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= runtime.world_size
    return value


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator, runtime: Runtime, precision: str) -> float:
    """Mean loss over a fixed validation budget, averaged over ranks."""
    model.eval()
    total, count = torch.zeros((), device=runtime.device), 0
    for inputs, targets in batches:
        with autocast_context(precision, runtime.device):
            total += model(inputs.to(runtime.device), targets.to(runtime.device)).float()
        count += 1
    model.train()
    return mean_over_ranks(total / count, runtime).item()


def neuron_diagnostics(cfg: dict[str, Any], model: torch.nn.Module, val_files: list, runtime: Runtime) -> NeuronDiagnostics | None:
    """The per-layer neuron diagnostics (docs/neuron_death.md), or None when they are off: on
    rank 0 alone with replicated parameters; on every rank under FSDP2, whose probe forward and
    whole weights need them all (only rank 0 logs)."""
    sharded = runtime.distributed and cfg["train"]["parallelism"] == "fsdp2"
    if not (runtime.is_main or sharded):
        return None
    return NeuronDiagnostics.from_config(cfg["diagnostics"], model, val_files, cfg["train"]["seq_len"])


def hellaswag_subset(
    eval_cfg: dict[str, Any], tcfg: dict[str, Any], tokenizer: str, runtime: Runtime
) -> list[dict[str, Any]] | None:
    """The fixed HellaSwag rows scored during training, or None when that is off.

    Scored with the training length as the model's length, so every ending must fit in it.
    """
    if not eval_cfg["hellaswag_every"]:
        return None
    if runtime.distributed and tcfg["parallelism"] == "fsdp2":
        # Ranks score different rows, so their forward passes (collectives under FSDP2) would not pair up.
        raise ValueError(
            "eval.hellaswag_every needs train.parallelism=ddp under torchrun; score FSDP2 runs afterwards with python -m eval.hellaswag"
        )

    def rows() -> list[dict[str, Any]]:
        return load_subset(eval_cfg["hellaswag_examples"], eval_cfg["hellaswag_data_path"])

    first = rows() if runtime.is_main else None  # rank 0 fetches the split once
    barrier(runtime)
    subset = first if runtime.is_main else rows()
    encode = get_tokenizer(tokenizer).encode_ordinary
    longest = max(len(encode(" " + ending)) for row in subset for ending in row["endings"])
    if longest >= tcfg["seq_len"]:
        raise ValueError(
            f"eval.hellaswag_every needs train.seq_len > {longest} (the longest ending of the subset, in {tokenizer} tokens)"
        )
    return subset


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


def grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (whole, also when FSDP2 shards them), on the device."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(model.parameters()).device)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def parameters_finite(model: torch.nn.Module, runtime: Runtime) -> bool:
    """Whether every parameter is finite on every rank (one host sync: checked before saving)."""
    bad = torch.zeros((), device=runtime.device)
    for param in model.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        bad += (~torch.isfinite(local)).sum()
    return mean_over_ranks(bad, runtime).item() == 0


def step_scalars(loss_sum: torch.Tensor, norm: torch.Tensor, stop: bool, runtime: Runtime) -> tuple[float, float, bool]:
    """(mean loss over ranks, grad norm, whether any rank was asked to stop): one all-reduce and
    one host sync per step, so that every rank takes the same decision at the same step."""
    packed = torch.stack([loss_sum.float(), norm.float(), torch.tensor(float(stop), device=loss_sum.device)])
    loss, norm_value, stops = mean_over_ranks(packed, runtime).tolist()
    return loss, norm_value, stops > 0


def select_checkpoint(run: RunDir) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint whose steps metrics.jsonl covers (read_metrics refuses one
    damaged inside), and each newer one passed over, with why. Refuses a run whose checkpoints
    are all passed over rather than silently starting it again. Writes nothing: the launch sets
    the passed-over ones aside once it is accepted."""
    records = read_metrics(run.path) if run.metrics_path.is_file() else []
    found, passed_over = newest_intact(run.checkpoint_dir, logged_through(records))
    if found is None and passed_over:
        raise CheckpointError(
            f"no intact checkpoint in {run.checkpoint_dir} ({'; '.join(describe(passed_over))}); "
            "move those away to start the run over"
        )
    return found, passed_over


def follow_schedule(scheduler: LambdaLR, optimizer: torch.optim.Optimizer) -> None:
    """Give each group the lr this launch's schedule sets for the next step (LambdaLR's own
    formula). A checkpoint holds the lr its launch's schedule set, which differs once train.steps
    has grown: the decay moves later."""
    for group, scale, base_lr in zip(optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * scale(scheduler.last_epoch)


def train(cfg: dict[str, Any]) -> Path:
    """Train (or resume) the run `cfg` describes; returns its run directory.

    Stops with CheckpointError, RunDirError or DataError (bad input, exit 2), Diverged (exit 3)
    or RunStopped (a signal: exit 75 after a checkpoint); train/cli.py gives the codes.
    """
    tcfg = cfg["train"]
    runtime = init_runtime(tcfg["device"], tcfg["timeout_s"])
    check_config(cfg, runtime.world_size)
    accum = accumulation_steps(tcfg["batch_tokens"], tcfg["micro_batch"], tcfg["seq_len"], runtime.world_size)
    set_determinism(cfg["seed"], tcfg["deterministic"], tcfg["threads"])

    # Everything that can reject the input comes before the run directory is touched.
    if runtime.is_main:
        train_files, val_files = resolve_shards(cfg["data"])  # rank 0 prepares the built-in corpus and checks the shards
    barrier(runtime)
    if not runtime.is_main:
        train_files, val_files = resolve_shards(cfg["data"], verify=False)
    loader = TokenLoader(
        train_files, tcfg["micro_batch"], tcfg["seq_len"], runtime.rank, runtime.world_size, cfg["seed"],
        vocab_size=cfg["model"]["vocab_size"],
    )
    validation_batch_count(
        val_files, tcfg["micro_batch"], tcfg["seq_len"], cfg["data"]["val_tokens"], runtime.world_size,
        vocab_size=cfg["model"]["vocab_size"],
    )
    hellaswag = hellaswag_subset(cfg["eval"], tcfg, cfg["data"]["tokenizer"], runtime)
    model = build_model(cfg["model"]).to(runtime.device)
    trained = parallelize(model, runtime, tcfg["parallelism"])
    optimizer = build_optimizer(cfg["optim"], model)
    total_steps = tcfg["steps"]
    scheduler = LambdaLR(
        optimizer, partial(lr_scale, total=total_steps, warmup_frac=tcfg["warmup_frac"], decay_frac=tcfg["decay_frac"])
    )

    run = RunDir(cfg["out_dir"])
    try:
        with StopSignals() as stop:
            return _train(cfg, runtime, run, loader, val_files, hellaswag, model, trained, optimizer, scheduler, accum, stop)
    finally:
        run.unlock()


def _train(cfg, runtime, run, loader, val_files, hellaswag, model, trained, optimizer, scheduler, accum, stop) -> Path:
    tcfg = cfg["train"]
    total_steps = tcfg["steps"]
    # Rank 0 checks everything that can refuse the launch before it writes anything (exit 2: nothing was changed).
    checkpoint, passed_over, saved = None, [], None
    if runtime.is_main:
        run.lock()
        checkpoint, passed_over = select_checkpoint(run)
        saved = read_meta(checkpoint) if checkpoint else None
        changes = run.changes(cfg, saved["config"] if saved else None)
        resume_step = saved["step"] if saved else 0
        if "train.steps" in changes:
            problem = schedule_change_problem(changes["train.steps"][0], tcfg, resume_step)
            if problem:
                raise RunDirError(problem)
        if saved:
            loader.check_state(saved["loader"])
    if runtime.distributed:
        shared = [checkpoint]
        dist.broadcast_object_list(shared, src=0)
        checkpoint = shared[0]

    diagnostics = neuron_diagnostics(cfg, model, val_files, runtime)
    tracer = (
        UnitTracer(model, optimizer, probe_batch(val_files, cfg["diagnostics"]["probe_tokens"], tcfg["seq_len"]).to(runtime.device),
                   cfg["diagnostics"]["trace_every"])
        if cfg["diagnostics"]["trace_every"] and runtime.is_main else None
    )
    start_step, elapsed, skipped = 0, 0.0, 0
    if checkpoint is not None:
        meta = load_checkpoint(checkpoint, model, optimizer, cfg["data"]["tokenizer"])
        scheduler.load_state_dict(meta["scheduler"])
        follow_schedule(scheduler, optimizer)
        loader.load_state_dict(meta["loader"])
        restore_rng_state(meta["rng"])
        if diagnostics is not None and meta["diagnostics"] is not None:
            diagnostics.load_state_dict(meta["diagnostics"])
        start_step, elapsed, skipped = meta["step"], meta["elapsed_s"], meta.get("skipped_steps", 0)
        if tracer is not None:
            tracer.resume(run.path, start_step, meta.get("unit_trace"))

    notes = []
    if runtime.is_main:
        for path, _ in passed_over:
            set_aside(path)
        facts = {
            "resumed_from": checkpoint.name if checkpoint else None,
            "damaged_checkpoints_passed_over": describe(passed_over),
            "ns_dtype": optimizer.ns_dtype_used(runtime.device),
        }
        notes = run.commit(cfg, runtime.world_size, changes, saved["config"] if saved else None, **facts)

    metrics = Metrics.for_run(cfg, run.path, start_step) if runtime.is_main else Metrics.disabled()
    n_params = sum(p.numel() for p in model.parameters())
    metrics.message(
        f"model {cfg['model']['name']}: {n_params:,} parameters | optimizer {cfg['optim']['name']} | "
        f"world size {runtime.world_size} | {accum} micro-batches of {tcfg['micro_batch']}x{tcfg['seq_len']} per step"
    )
    for line in describe(passed_over):
        metrics.message(f"passed over checkpoint {line}")
    for note in notes:
        metrics.message(note)
    if checkpoint is not None:
        metrics.message(f"resuming {run.path} from step {start_step} ({checkpoint.name})")

    if tcfg["compile"]:
        trained = torch.compile(trained)
    last_saved = checkpoint.name if checkpoint is not None else None

    def save(step: int) -> str:
        if not parameters_finite(model, runtime):
            raise Diverged(
                f"the parameters are not finite after step {step}; nothing was saved "
                f"(last good checkpoint: {last_saved or 'none'}); {DIVERGED_ADVICE}"
            )
        meta = {
            "elapsed_s": elapsed,
            "skipped_steps": skipped,
            "config": cfg,
            "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(),
            "rng": rng_state(),
            "diagnostics": diagnostics.state_dict() if diagnostics is not None else None,
            "unit_trace": tracer.checkpoint_state() if tracer is not None else None,
        }
        metrics.sync()  # every step logged so far is on disk before the checkpoint that covers it
        if tracer is not None:
            tracer.save(run.path)
        path = save_checkpoint(run.checkpoint_dir, step, model, optimizer, meta, tcfg["keep_checkpoints"])
        metrics.message(f"saved {path}")
        return path.name

    try:
        for step in range(start_step + 1, total_steps + 1):
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=runtime.device)
            for micro in range(accum):
                inputs, targets = (t.to(runtime.device) for t in loader.next_batch())
                with gradient_sync(trained, enabled=micro == accum - 1):
                    with autocast_context(tcfg["precision"], runtime.device):
                        loss = trained(inputs, targets) / accum
                    loss.backward()
                loss_sum += loss.detach()
            train_loss, norm, stopping = step_scalars(loss_sum, grad_norm(model), stop.received is not None, runtime)
            capture = diagnostics is not None and diagnostics.wants(step)
            trace = tracer is not None and tracer.wants(step)
            gradient_rows = diagnostics.gradient_rows() if capture else None
            if trace:
                tracer.before_step()
                decays = {n: g["lr"] * g["weight_decay"] for g in optimizer.param_groups for n in g.get("param_names", [])}
            if math.isfinite(train_loss) and math.isfinite(norm):
                optimizer.captured_updates = {} if capture or trace else None
                with DeviceTimer(runtime.device) as optimizer_timer:
                    optimizer.step()
            else:
                skipped += 1
                capture = trace = False
                if skipped > tcfg["max_skipped_steps"]:
                    raise Diverged(
                        f"the run diverged at step {step}: train loss {train_loss}, grad norm {norm}; the update was not "
                        f"applied and nothing was saved after the last good checkpoint ({last_saved or 'none'}); "
                        f"{DIVERGED_ADVICE}"
                    )
                metrics.message(f"step {step}: train loss {train_loss}, grad norm {norm}: update skipped ({skipped} of at most {tcfg['max_skipped_steps']})")
                optimizer_timer = None
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()  # the step's time, and the optimizer timer's events, are complete only now
            step_time = time.perf_counter() - started
            elapsed += step_time

            record = {
                "step": step,
                "total_steps": total_steps,
                "tokens": step * tcfg["batch_tokens"],
                "train_loss": train_loss,
                "grad_norm": norm,
                "lr_scale": lr_scale(step - 1, total_steps, tcfg["warmup_frac"], tcfg["decay_frac"]),
                "tokens_per_s": tcfg["batch_tokens"] / step_time,
                "optim_step_ms": optimizer_timer.ms() if optimizer_timer is not None else 0.0,
                "elapsed_s": elapsed,
            }
            if skipped or tcfg["max_skipped_steps"]:
                record["skipped_steps"] = skipped
            if validation_due(step, tcfg):
                val = validation_batches(
                    val_files, tcfg["micro_batch"], tcfg["seq_len"], cfg["data"]["val_tokens"], runtime.rank, runtime.world_size
                )
                record["val_loss"] = evaluate(model, val, runtime, tcfg["precision"])
            if capture:
                record.update(diagnostics.measure(step, optimizer.captured_updates, gradient_rows))
                recycled = optimizer.recycled_units()
                if recycled is not None:
                    record["diag/recycled_units"] = int(recycled)
            if trace:
                tracer.after_step(step, optimizer.captured_updates, decays)
            optimizer.captured_updates = None
            if hellaswag and step % cfg["eval"]["hellaswag_every"] == 0:
                record.update(
                    quick_score(
                        model,
                        hellaswag,
                        tokenizer=cfg["data"]["tokenizer"],
                        max_length=tcfg["seq_len"],
                        batch_size=tcfg["micro_batch"],
                        precision=tcfg["precision"],
                    )
                )
            metrics.log(record)
            if step == total_steps or stopping or (tcfg["checkpoint_every"] and step % tcfg["checkpoint_every"] == 0):
                last_saved = save(step)
            if stopping and step < total_steps:
                raise RunStopped(
                    f"asked to stop (SIGTERM or SIGINT) at step {step} of {total_steps}; saved {run.checkpoint_dir / last_saved}; "
                    "run the same command again to resume"
                )
        if start_step >= total_steps:
            metrics.message(f"{run.path} is already complete at step {total_steps}; nothing to do")
    finally:
        metrics.close()
    return run.path
