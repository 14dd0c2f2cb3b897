"""Process group, device and determinism: the only place that reads torchrun's env."""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist


class Placement(NamedTuple):
    """This process's place in the job, as torchrun sets it in the environment; (0, 1, 0) without
    torchrun. Readable before the process group exists (`init_runtime` joins it)."""

    rank: int
    world_size: int
    local_rank: int


def placement_from_env() -> Placement:
    return Placement(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")


def init_runtime(device: str, timeout_s: float = 300.0) -> Runtime:
    """Join the process group torchrun describes (if any) once per process."""
    rank, world_size, local_rank = placement_from_env()
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=timedelta(seconds=timeout_s), device_id=dev if dev.type == "cuda" else None
        )
        atexit.register(leave_process_group)
    return Runtime(rank, world_size, local_rank, dev)


def leave_process_group() -> None:
    """Leave before the interpreter tears down (init_runtime's exit hook): left to teardown, gloo's
    threads were measured to abort a rank ("terminate called without an active exception") in 1 of
    6 2-rank evals. A caller may have left already."""
    if dist.is_initialized():
        dist.destroy_process_group()


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class DeviceTimer:
    """Times a region of device work without adding a host sync: CUDA events on a GPU, the
    host clock on the CPU. Read ms() after something else has synchronised (a loss's .item())."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> DeviceTimer:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.elapsed_ms = 1000 * (time.perf_counter() - self.started)

    def ms(self) -> float:
        return self.start.elapsed_time(self.end) if self.cuda else self.elapsed_ms


def set_determinism(seed: int, deterministic: bool, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


PARALLELISMS = ("ddp", "fsdp2")


def parallelize(model: torch.nn.Module, runtime: Runtime, parallelism: str) -> torch.nn.Module:
    """The module to train: the model itself on one process, DDP-wrapped, or FSDP2-sharded in place.

    FSDP2 replaces parameters with DTensors, so the optimizer must be built after this.
    """
    if parallelism not in PARALLELISMS:
        raise ValueError(f"train.parallelism must be one of {PARALLELISMS}, got {parallelism!r}")
    if not runtime.distributed:
        return model
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)


@contextmanager
def gradient_sync(module: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if enabled or not dist.is_initialized():
        yield
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    else:  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
