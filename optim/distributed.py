"""The project's rank helpers, and the optimizer's view of torch.distributed: share out
orthogonalisation work, gather results.

The rank helpers (world, is_main_process, barrier, mean_over_ranks, main_process_decides,
gather_from_ranks) live here, below train/, because optim must not import train; each is a no-op on one process.
run_on_gloo_ranks spawns CPU ranks for the 2-rank checks (optim/check.py) and tests.

Assumptions: when a process group is initialised, every rank calls step() with the same
gradients (DDP has averaged them, or FSDP2 holds them sharded as DTensors), so every rank
can compute every momentum and only the expensive orthogonalisation needs splitting.
"""

import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of `value` over ranks (itself on one process), on its device; SUM then divide,
    since gloo has no AVG."""
    world_size = world()[1]
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return value


def main_process_decides(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object), so that all take the same decision."""
    if world()[1] == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def gather_from_ranks(value: Any) -> list[Any]:
    """Every rank's `value` (a picklable object), in rank order, on every rank; [value] on one process."""
    world_size = world()[1]
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def run_on_gloo_ranks(fn: Callable[..., Any], args: tuple, world_size: int, timeout_s: float) -> list[Any]:
    """[fn(*args) on rank r for r in range(world_size)]: fn run in `world_size` spawned CPU processes
    that form one gloo process group, one thread each (how a check or a test runs several ranks
    without a GPU). fn and its result must pickle (fn a module-level function). A rank's exception
    is raised here (torch.multiprocessing.ProcessRaisedException); TimeoutError, with every rank
    killed, when they have not all finished within timeout_s."""
    with tempfile.TemporaryDirectory() as directory:
        context = mp.spawn(_gloo_rank, args=(world_size, directory, fn, args), nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=2):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"{world_size} gloo ranks did not finish in {timeout_s} s")
        return [torch.load(f"{directory}/rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def _gloo_rank(rank: int, world_size: int, directory: str, fn: Callable[..., Any], args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{directory}/init", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.save(fn(*args), f"{directory}/rank{rank}.pt")
    dist.destroy_process_group()


def whole(t: Tensor) -> Tensor:
    """The full matrix of a (possibly FSDP2-sharded) tensor; a plain tensor is returned as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like_param(update: Tensor, param: Tensor) -> Tensor:
    """An update laid out like `param`: this rank's shard of a full update for a DTensor param;
    an update that is already a DTensor (AdamW's, from sharded gradients) is returned as is.

    Every rank holds the same full update, so each takes its own shard without communication.
    """
    if isinstance(param, DTensor) and not isinstance(update, DTensor):
        return distribute_tensor(update, param.device_mesh, param.placements, src_data_rank=None)
    return update


def polar_cost(rows: int, cols: int) -> int:
    """Work of orthogonalising one rows×cols matrix, up to a constant: each Newton–Schulz
    iteration costs a few products of m·n·min(m, n) flops."""
    return rows * cols * min(rows, cols)


def assign_owners(costs: list[int], world_size: int) -> list[int]:
    """The rank that computes each matrix: longest first, each to the least-loaded rank.

    Greedy longest-processing-time: matrices in decreasing cost (ties: lower index first) each
    go to the rank with the least total cost so far (ties: lower rank). Deterministic, so every
    rank computes the same owners; the busiest rank carries at most the optimal load plus one
    matrix.
    """
    loads = [0] * world_size
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += costs[index]
    return owners


def owners_by_stack(shapes: list[tuple[int, int, int]], world_size: int) -> list[list[int]]:
    """For stacks of (count, rows, cols) matrices, the owning rank of each matrix, per stack."""
    flat = assign_owners([polar_cost(rows, cols) for count, rows, cols in shapes for _ in range(count)], world_size)
    owners, start = [], 0
    for count, _, _ in shapes:
        owners.append(flat[start : start + count])
        start += count
    return owners


def rank_totals(per_matrix: list[int], owners: list[list[int]], world_size: int) -> list[int]:
    """Per rank, the sum over the matrices it owns of a per-stack quantity (`per_matrix[s]` for
    each matrix of stack s; owners from `owners_by_stack`): the bytes it sends, or its work."""
    return [sum(size * owner.count(r) for size, owner in zip(per_matrix, owners)) for r in range(world_size)]


Stack = tuple[Tensor, dict[str, Tensor]]
ALIGN_BYTES = 16  # every piece of the gathered byte buffer starts aligned for any dtype


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES


def _piece_bytes(t: Tensor) -> int:
    """Bytes one matrix of stack `t` [B, ...] takes in the buffer, rounded up for alignment."""
    return _aligned(t[0].numel() * t.element_size())


def map_balanced_across_ranks(fn, stacks: list[Stack]) -> list[Stack]:
    """[fn(X, state) for X, state in stacks], each rank computing only the matrices it owns.

    X is a stack [B, m, n] and state a dict of per-matrix tensors stacked [B, ...]. Whole
    matrices of all stacks are shared out by cost (`assign_owners`); each rank calls fn once
    per stack on the matrices it owns there (same-shape matrices stay batched), and one
    all-gather of a flat byte buffer, padded only to the busiest rank's size, gives every rank
    every result in the original order, so all ranks apply identical updates. fn must return U
    with X's shape and dtype and the state tensors with their input shapes and dtypes: every
    rank then knows every piece's place in the buffer without asking.
    """
    fn = _checked(fn)
    rank, world_size = world()
    if world_size == 1 or not stacks:
        return [fn(X, state) for X, state in stacks]
    owners = owners_by_stack([(X.shape[0], *X.shape[-2:]) for X, _ in stacks], world_size)

    pieces: list[Tensor] = []  # this rank's results, in (stack, matrix, tensor) order
    for (X, state), owner in zip(stacks, owners):
        mine = [j for j, r in enumerate(owner) if r == rank]
        if not mine:
            continue
        U, new_state = fn(_take(X, mine), {key: _take(value, mine) for key, value in state.items()})
        for j in range(len(mine)):
            for t in (U, *(new_state[key] for key in state)):
                pieces.append(_padded_bytes(t[j]))

    piece_bytes = [sum(_piece_bytes(t) for t in (X, *state.values())) for X, state in stacks]
    size = max(rank_totals(piece_bytes, owners, world_size))
    device = stacks[0][0].device
    local = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8, device=device)
    local = torch.cat([local, local.new_zeros(size - local.numel())])
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local)

    offsets = [0] * world_size
    results = []
    for (X, state), owner in zip(stacks, owners):
        columns: list[list[Tensor]] = [[] for _ in range(1 + len(state))]
        for r in owner:
            for column, like in zip(columns, (X, *state.values())):
                nbytes = _piece_bytes(like)
                raw = parts[r][offsets[r] : offsets[r] + nbytes]
                column.append(raw[: like[0].numel() * like.element_size()].view(like.dtype).view(like.shape[1:]))
                offsets[r] += nbytes
        U, *values = (torch.stack(column) for column in columns)
        results.append((U, dict(zip(state, values))))
    return results


def _checked(fn):
    """fn, raising TypeError unless it returns U like X and every state tensor like its input
    (shapes and dtypes only: no host sync), on one rank as on N."""

    def check(got: Tensor, expected: Tensor, what: str) -> None:
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise TypeError(
                f"an update direction must return {what} with shape {tuple(expected.shape)} and dtype "
                f"{expected.dtype}, got {tuple(got.shape)} {got.dtype}"
            )

    def checked_fn(X: Tensor, state: dict[str, Tensor]) -> Stack:
        U, new_state = fn(X, state)
        check(U, X, "the update")
        if new_state.keys() != state.keys():
            raise TypeError(f"an update direction must return the state keys {sorted(state)}, got {sorted(new_state)}")
        for key, value in state.items():
            check(new_state[key], value, f"state {key!r}")
        return U, new_state

    return checked_fn


def _take(t: Tensor, indices: list[int]) -> Tensor:
    """The matrices `indices` of stack t, stacked from views (no index tensor copied to the device)."""
    return torch.stack([t[j] for j in indices])


def _padded_bytes(t: Tensor) -> Tensor:
    """t's bytes, zero-padded to a multiple of ALIGN_BYTES (its piece of the buffer)."""
    raw = t.contiguous().view(-1).view(torch.uint8)
    padding = _aligned(raw.numel()) - raw.numel()
    return torch.cat([raw, raw.new_zeros(padding)]) if padding else raw
