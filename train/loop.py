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
from torch.optim.lr_scheduler import LambdaLR

from eval.hellaswag import load_subset, quick_score
from model import build_model
from model.tokenizer import get_tokenizer
from optim import build_optimizer
from train.checkpoint import list_checkpoints, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from train.data import TokenLoader, resolve_shards, validation_batches
from train.diagnostics import NeuronDiagnostics
from train.dist import DeviceTimer, Runtime, autocast_context, gradient_sync, init_runtime, parallelize, set_determinism
from train.metrics import Metrics
from train.rundir import RunDir

PRECISIONS = ("auto", "fp32", "bf16")


def lr_scale(step: int, total: int, warmup_frac: float, decay_frac: float) -> float:
    """Linear warmup, constant, then linear decay to zero at `total` (step counts from 0)."""
    warmup, decay = int(warmup_frac * total), int(decay_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    if step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def accumulation_steps(batch_tokens: int, micro_batch: int, seq_len: int, world_size: int) -> int:
    per_pass = micro_batch * seq_len * world_size
    if batch_tokens <= 0 or batch_tokens % per_pass:
        raise ValueError(
            f"train.batch_tokens={batch_tokens} must be a positive multiple of "
            f"world_size x train.micro_batch x train.seq_len = {world_size} x {micro_batch} x {seq_len} = {per_pass}"
        )
    return batch_tokens // per_pass


def validate_train_config(train_cfg: dict[str, Any]) -> None:
    for key in ("steps", "micro_batch", "seq_len"):
        if not isinstance(train_cfg[key], int) or train_cfg[key] <= 0:
            raise ValueError(f"train.{key} must be a positive integer, got {train_cfg[key]!r}")
    for key in ("warmup_frac", "decay_frac"):
        if not 0.0 <= train_cfg[key] <= 1.0:
            raise ValueError(f"train.{key} must be in [0, 1], got {train_cfg[key]}")
    if train_cfg["warmup_frac"] + train_cfg["decay_frac"] > 1.0:
        raise ValueError("train.warmup_frac + train.decay_frac must be at most 1")
    if train_cfg["precision"] not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {train_cfg['precision']!r}")
    keep = train_cfg["keep_checkpoints"]
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"train.keep_checkpoints must be a positive integer or null, got {keep!r}")


def mean_over_ranks(value: torch.Tensor, runtime: Runtime) -> float:
    if runtime.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if runtime.device.type == "cuda" else dist.ReduceOp.SUM)
        if runtime.device.type != "cuda":  # gloo has no AVG
            value /= runtime.world_size
    return value.item()


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
    return mean_over_ranks(total / count, runtime)


def neuron_diagnostics(cfg: dict[str, Any], model: torch.nn.Module, val_files: list, runtime: Runtime) -> NeuronDiagnostics | None:
    """The per-layer neuron diagnostics (docs/neuron_death.md), or None when they are off: on
    rank 0 alone with replicated parameters; on every rank under FSDP2, whose probe forward and
    whole weights need them all (only rank 0 logs)."""
    sharded = runtime.distributed and cfg["train"]["parallelism"] == "fsdp2"
    if not (runtime.is_main or sharded):
        return None
    return NeuronDiagnostics.from_config(cfg["diagnostics"], model, val_files, cfg["train"]["seq_len"])


def hellaswag_subset(eval_cfg: dict[str, Any], tcfg: dict[str, Any], runtime: Runtime) -> list[dict[str, Any]] | None:
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
    encode = get_tokenizer().encode
    longest = max(len(encode(" " + ending)) for row in subset for ending in row["endings"])
    if longest >= tcfg["seq_len"]:
        raise ValueError(f"eval.hellaswag_every needs train.seq_len > {longest} (the longest ending of the subset, in tokens)")
    return subset


def train(cfg: dict[str, Any]) -> Path:
    """Train (or resume) the run `cfg` describes; returns its run directory."""
    tcfg = cfg["train"]
    validate_train_config(tcfg)
    runtime = init_runtime(tcfg["device"], tcfg["timeout_s"])
    accum = accumulation_steps(tcfg["batch_tokens"], tcfg["micro_batch"], tcfg["seq_len"], runtime.world_size)
    set_determinism(cfg["seed"], tcfg["deterministic"], tcfg["threads"])

    # Everything that can reject the input comes before the run directory is touched.
    if runtime.is_main:
        train_files, val_files = resolve_shards(cfg["data"])  # rank 0 prepares the built-in corpus
    barrier(runtime)
    if not runtime.is_main:
        train_files, val_files = resolve_shards(cfg["data"])
    loader = TokenLoader(train_files, tcfg["micro_batch"], tcfg["seq_len"], runtime.rank, runtime.world_size, cfg["seed"])
    hellaswag = hellaswag_subset(cfg["eval"], tcfg, runtime)
    model = build_model(cfg["model"]).to(runtime.device)
    trained = parallelize(model, runtime, tcfg["parallelism"])
    optimizer = build_optimizer(cfg["optim"], model)
    total_steps = tcfg["steps"]
    scheduler = LambdaLR(
        optimizer, partial(lr_scale, total=total_steps, warmup_frac=tcfg["warmup_frac"], decay_frac=tcfg["decay_frac"])
    )

    run = RunDir(cfg["out_dir"])
    if runtime.is_main:
        run.prepare(cfg, runtime.world_size)
    barrier(runtime)

    diagnostics = neuron_diagnostics(cfg, model, val_files, runtime)

    start_step, elapsed = 0, 0.0
    checkpoints = list_checkpoints(run.checkpoint_dir)
    if checkpoints:
        meta = load_checkpoint(checkpoints[-1], model, optimizer)
        scheduler.load_state_dict(meta["scheduler"])
        loader.load_state_dict(meta["loader"])
        restore_rng_state(meta["rng"])
        if diagnostics is not None and meta["diagnostics"] is not None:
            diagnostics.load_state_dict(meta["diagnostics"])
        start_step, elapsed = meta["step"], meta["elapsed_s"]

    metrics = Metrics.for_run(cfg, run.path, start_step if checkpoints else -1) if runtime.is_main else Metrics.disabled()
    n_params = sum(p.numel() for p in model.parameters())
    metrics.message(
        f"model {cfg['model']['name']}: {n_params:,} parameters | optimizer {cfg['optim']['name']} | "
        f"world size {runtime.world_size} | {accum} micro-batches of {tcfg['micro_batch']}x{tcfg['seq_len']} per step"
    )
    if checkpoints:
        metrics.message(f"resuming {run.path} from step {start_step} ({checkpoints[-1].name})")

    if tcfg["compile"]:
        trained = torch.compile(trained)

    def save(step: int) -> None:
        meta = {
            "elapsed_s": elapsed,
            "config": cfg,
            "scheduler": scheduler.state_dict(),
            "loader": loader.state_dict(),
            "rng": rng_state(),
            "diagnostics": diagnostics.state_dict() if diagnostics is not None else None,
        }
        path = save_checkpoint(run.checkpoint_dir, step, model, optimizer, meta, tcfg["keep_checkpoints"])
        metrics.message(f"saved {path}")

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
        capture = diagnostics is not None and diagnostics.wants(step)
        optimizer.captured_updates = {} if capture else None
        with DeviceTimer(runtime.device) as optimizer_timer:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        train_loss = mean_over_ranks(loss_sum, runtime)  # also a host sync, so times are real
        step_time = time.perf_counter() - started
        elapsed += step_time
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"train loss is {train_loss} at step {step}; the run diverged")

        record = {
            "step": step,
            "total_steps": total_steps,
            "tokens": step * tcfg["batch_tokens"],
            "train_loss": train_loss,
            "lr_scale": lr_scale(step - 1, total_steps, tcfg["warmup_frac"], tcfg["decay_frac"]),
            "tokens_per_s": tcfg["batch_tokens"] / step_time,
            "optim_step_ms": optimizer_timer.ms(),
            "elapsed_s": elapsed,
        }
        if step == total_steps or (tcfg["val_every"] and step % tcfg["val_every"] == 0):
            val = validation_batches(
                val_files, tcfg["micro_batch"], tcfg["seq_len"], cfg["data"]["val_tokens"], runtime.rank, runtime.world_size
            )
            record["val_loss"] = evaluate(model, val, runtime, tcfg["precision"])
        if capture:
            record.update(diagnostics.measure(step, optimizer.captured_updates))
            optimizer.captured_updates = None
        if hellaswag and step % cfg["eval"]["hellaswag_every"] == 0:
            record.update(
                quick_score(model, hellaswag, max_length=tcfg["seq_len"], batch_size=tcfg["micro_batch"], precision=tcfg["precision"])
            )
        metrics.log(record)
        if step == total_steps or (tcfg["checkpoint_every"] and step % tcfg["checkpoint_every"] == 0):
            save(step)

    if start_step >= total_steps:
        metrics.message(f"{run.path} is already complete at step {total_steps}; nothing to do")
    metrics.close()
    return run.path
