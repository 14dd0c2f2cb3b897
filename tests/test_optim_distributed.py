"""A 2-rank gloo run of every optimizer equals the 1-process run, bit for bit.

One spawn runs every optimizer twice: with replicated parameters (as under DDP: each rank
orthogonalises the matrices it owns, then one all-gather) and with FSDP2 `fully_shard`
parameters (DTensors: each matrix made whole for the orthogonalisation, sharded back). Every
rank's final parameters and optimizer state are compared with a single-process run here. The
same spawn shares out stacks of mixed shapes and dtypes whose ranks carry unequal bytes, and
the work-sharing arithmetic is checked without a spawn.
"""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from optim import OPTIMIZERS, build_optimizer
from optim.distributed import (
    assign_owners,
    map_balanced_across_ranks,
    owners_by_stack,
    rank_totals,
    run_on_gloo_ranks,
    whole,
)
from tests.test_optimizers import StandInGPT, fake_gradients, load_config

WORLD_SIZE = 2
STEPS = 3
LAYERS = 3  # odd stacks of up- and down-projections: each rank owns matrices of both
CASES = [(name, overrides) for name in OPTIMIZERS for overrides in ({},)] + [
    ("aurora", {"apply_to": "rectangular", "pp_warm_start": True, "pp_iterations": 1}),
    ("aurora", {"pp_row_floor": 0.1, "recycle_after": 2}),  # silent units recycled (replicated parameters only)
    ("muon", {"recycle_after": 2}),  # the same step hook under another update rule
]
MODES = ("replicated", "fsdp2")
SILENT_UNITS = 3  # with recycling on, the first units of every up-projection get no gradient


# (case, mode) pairs; recycling under FSDP2 is refused (test_recycling_refuses_sharded_parameters)
RUNS = [(case, mode) for case in CASES for mode in MODES if not (case[1].get("recycle_after") and mode == "fsdp2")]


def shard_like(grad, param):
    if isinstance(param, DTensor):
        return distribute_tensor(grad, param.device_mesh, param.placements, src_data_rank=None)
    return grad


def run(case, mesh=None):
    """Final parameters and optimizer state (all whole tensors) after STEPS steps."""
    name, overrides = case
    model = StandInGPT(layers=LAYERS)
    if mesh is not None:
        fully_shard(model, mesh=mesh)
    optimizer = build_optimizer(load_config(name, **overrides), model)
    for step in range(STEPS):
        fake_gradients(model, step)
        if overrides.get("recycle_after"):
            for block in model.blocks:
                block.mlp.up.weight.grad[:SILENT_UNITS] = 0.0
        for param in model.parameters():
            param.grad = shard_like(param.grad, param)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    names = {param: param_name for param_name, param in model.named_parameters()}
    return {
        "params": {n: whole(p.detach()).clone() for n, p in model.named_parameters()},
        "state": {
            f"{names[p]}.{key}": whole(value).clone()
            for p, state in optimizer.state.items()
            for key, value in state.items()
            if isinstance(value, torch.Tensor)
        },
    }


def uneven_stacks():
    """Stacks that leave the ranks unequal bytes to gather (so the buffer is padded), with a
    float64 stack, bf16 state of a size that is no multiple of the alignment, and a stack of one
    matrix (so one rank owns none of it)."""
    generator = torch.Generator().manual_seed(7)
    return [
        (torch.randn(3, 8, 4, generator=generator), {"scale": torch.rand(3, 8, 1, generator=generator).bfloat16()}),
        (torch.randn(1, 5, 5, generator=generator, dtype=torch.float64), {}),
        (torch.randn(4, 6, 3, generator=generator), {"scale": torch.rand(4, 6, 1, generator=generator).bfloat16()}),
    ]


def scaled_by_state(X, state):
    """A stand-in update direction that reads and advances per-matrix state."""
    if not state:
        return X.tanh(), state
    return X * state["scale"].to(X.dtype), {"scale": state["scale"] * 2 + 1}


def _rank_results():
    """This rank's result of every run and of sharing out the uneven stacks."""
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    results = {}
    for case, mode in RUNS:
        results[(str(case), mode)] = run(case, mesh if mode == "fsdp2" else None)
    results["uneven stacks"] = map_balanced_across_ranks(scaled_by_state, uneven_stacks())
    return results


@pytest.fixture(scope="module")
def two_rank_results():
    return run_on_gloo_ranks(_rank_results, (), WORLD_SIZE, timeout_s=300)


def test_recycling_refuses_sharded_parameters():
    with pytest.raises(ValueError, match="recycle_after needs replicated parameters"):
        spawn_refusal()


def spawn_refusal():
    """Build the optimizer over DTensor parameters in one process (a 1-rank mesh)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(directory, 'init')}", rank=0, world_size=1)
        try:
            model = StandInGPT(layers=1)
            fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
            build_optimizer(load_config("aurora", recycle_after=2), model)
        finally:
            dist.destroy_process_group()


@pytest.mark.parametrize(
    ("case", "mode"),
    RUNS,
    ids=[case[0] + ("+" + ",".join(case[1]) if case[1] else "") + "-" + mode for case, mode in RUNS],
)
def test_two_rank_run_equals_one_process_run(two_rank_results, case, mode):
    expected = run(case)
    if case[1].get("recycle_after"):  # the silent units were recycled once, at step 2 of 3
        assert [v.item() for k, v in expected["state"].items() if k.endswith("recycled_units")] == [
            SILENT_UNITS
        ] * LAYERS
    for rank, results in enumerate(two_rank_results):
        got = results[(str(case), mode)]
        for kind in ("params", "state"):
            assert got[kind].keys() == expected[kind].keys()
            for key, value in expected[kind].items():
                assert torch.equal(got[kind][key], value), f"rank {rank} {kind} {key}"


def test_uneven_stacks_of_mixed_dtypes_shared_across_two_ranks_equal_one_process(two_rank_results):
    shapes = [(X.shape[0], *X.shape[-2:]) for X, _ in uneven_stacks()]
    owners = owners_by_stack(shapes, WORLD_SIZE)
    piece_bytes = [128 + 16, 208, 80 + 16]  # fp32 8x4 + bf16 8x1; fp64 5x5; fp32 6x3 + bf16 6x1: each rounded up to 16
    assert len(set(rank_totals(piece_bytes, owners, WORLD_SIZE))) == 2, "the case must pad one rank's buffer"
    assert any(set(owner) == {0} or set(owner) == {1} for owner in owners), "the case must leave a rank a stack short"
    expected = [scaled_by_state(X, state) for X, state in uneven_stacks()]
    for rank, results in enumerate(two_rank_results):
        for (U, state), (expected_U, expected_state) in zip(results["uneven stacks"], expected, strict=True):
            assert U.dtype == expected_U.dtype and torch.equal(U, expected_U), f"rank {rank}"
            assert state.keys() == expected_state.keys()
            for key, value in expected_state.items():
                assert state[key].dtype == value.dtype and torch.equal(state[key], value), f"rank {rank} state {key}"


def test_assign_owners_gives_every_matrix_one_rank_and_the_busiest_at_most_one_matrix_over_the_mean():
    generator = torch.Generator().manual_seed(0)
    costs = torch.randint(1, 1000, (37,), generator=generator).tolist()
    for world_size in (1, 2, 3, 8, 64):
        owners = assign_owners(costs, world_size)
        assert owners == assign_owners(costs, world_size)  # every rank computes the same
        assert len(owners) == len(costs) and all(0 <= r < world_size for r in owners)
        loads = [sum(c for c, r in zip(costs, owners) if r == rank) for rank in range(world_size)]
        assert max(loads) <= sum(costs) / world_size + max(costs)


def test_gpt124m_matrices_shared_out_gather_the_ideal_bytes_on_8_ranks_and_one_mlp_matrix_each_on_64():
    shapes = [(48, 768, 768), (12, 3072, 768), (12, 768, 3072)]  # q, k, v, out; up; down
    piece_bytes = [rows * cols * 4 for _, rows, cols in shapes]  # fp32 updates, no state (Muon)
    total = sum(count * size for (count, _, _), size in zip(shapes, piece_bytes))
    assert rank_totals(piece_bytes, owners_by_stack(shapes, 8), 8) == [total // 8] * 8
    assert max(rank_totals(piece_bytes, owners_by_stack(shapes, 64), 64)) == 3072 * 768 * 4


def test_an_update_direction_that_changes_dtype_or_state_is_refused():
    X = torch.randn(2, 4, 3)
    with pytest.raises(TypeError, match=r"return the update with shape \(2, 4, 3\) and dtype torch.float32, got"):
        map_balanced_across_ranks(lambda x, s: (x.double(), s), [(X, {})])
    with pytest.raises(TypeError, match="return the state keys \\['scale'\\], got \\[\\]"):
        map_balanced_across_ranks(lambda x, s: (x, {}), [(X, {"scale": torch.ones(2, 4, 1)})])
