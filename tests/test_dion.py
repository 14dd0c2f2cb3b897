"""Dion (optim/dion.py) against a transcription of microsoft/dion's reference code, and its options.

The 2-rank (replicated and FSDP2) runs of Dion are in tests/test_optim_distributed.py, which runs
every OPTIMIZERS entry; the state round trip and the conformance check cover it the same way.
"""

import math

import pytest
import torch
from torch import nn

from optim import Dion, build_optimizer
from optim.dion import dion_rank, initial_q
from tests.test_optimizers import StandInGPT, fake_gradients, load_config

# Shapes that exercise a stack (two tall), the transposed path (wide) and a square matrix.
SHAPES = ((24, 8), (24, 8), (8, 24), (12, 12))
LR, MU, WEIGHT_DECAY, EPSILON = 0.02, 0.95, 0.01, 1e-8
STEPS = 4


def reference_dion_step(W, G, M, Q, lr, mu, weight_decay, power_iters, epsilon=EPSILON):
    """One Dion step on one plain fp32 matrix W with momentum M (both changed in place); returns the new Q.

    A transcription of the maths of microsoft/dion, dion/dion_reference.py at commit
    0a059a4542e5aa74b40dcd1dce363836c7afcd48 (functions dion_update, power_iteration, orthogonalize
    with qr_method="qr", fix_all_zero_or_nan), for one process without sharding or compression.
    """
    M += G
    transposed = W.shape[0] < W.shape[1]  # the reference works on Mᵀ when W is wide
    B = M.T if transposed else M
    right = Q
    for _ in range(power_iters):
        left = torch.linalg.qr(B @ right)[0]
        right = B.T @ left
    if bool((M == 0).all()):
        left, right = torch.zeros_like(left), Q
    low_rank = left @ right.T
    M -= (1 - mu) * (low_rank.T if transposed else low_rank)
    new_q = right / (right.norm(dim=0, keepdim=True) + epsilon)
    W *= 1 - lr * weight_decay
    update = left @ new_q.T
    W -= math.sqrt(W.shape[0] / W.shape[1]) * lr * (update.T if transposed else update)
    return new_q


def gradients(step, zero_first=False):
    """Per-matrix gradients of a step; with zero_first, the first matrix's is zero at step 0 (so is its M)."""
    generator = torch.Generator().manual_seed(step)
    grads = [
        torch.randn(shape, generator=generator) * torch.exp(torch.randn(shape[0], 1, generator=generator))
        for shape in SHAPES
    ]
    if zero_first and step == 0:
        grads[0].zero_()
    return grads


@pytest.mark.parametrize("rank_fraction, power_iters", [(0.5, 1), (1.0, 1), (0.25, 2)])
def test_dion_equals_the_reference_to_fp32_rounding(rank_fraction, power_iters):
    torch.manual_seed(0)
    initial = [torch.randn(shape) * 0.1 for shape in SHAPES]
    ours = [nn.Parameter(w.clone()) for w in initial]
    optimizer = Dion(
        ours, lr=LR, mu=MU, weight_decay=WEIGHT_DECAY, rank_fraction=rank_fraction, power_iters=power_iters
    )
    theirs = [w.clone() for w in initial]
    momenta = [torch.zeros(shape) for shape in SHAPES]
    qs = [initial_q(*shape, rank_fraction, torch.device("cpu")) for shape in SHAPES]
    for step in range(STEPS):
        grads = gradients(step, zero_first=True)
        for param, grad in zip(ours, grads):
            param.grad = grad.clone()
        optimizer.step()
        for i, grad in enumerate(grads):
            qs[i] = reference_dion_step(theirs[i], grad, momenta[i], qs[i], LR, MU, WEIGHT_DECAY, power_iters)
    for param, W, M, Q in zip(ours, theirs, momenta, qs):
        state = optimizer.state[param]
        torch.testing.assert_close(param.detach(), W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["dion_momentum"], M, rtol=1e-5, atol=1e-5)
        # Q is fixed only up to the sign of each column (QR's convention); P Qᵀ and P Rᵀ are not.
        signs = torch.sign((state["dion_q"] * Q).sum(dim=0, keepdim=True))
        torch.testing.assert_close(state["dion_q"] * signs, Q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, cols", [(24, 8), (8, 24)])
@pytest.mark.parametrize("rank_fraction", [0.25, 0.5, 1.0])
def test_the_update_has_the_rank_rank_fraction_asks_for(rows, cols, rank_fraction):
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(rows, cols))
    optimizer = Dion([("w", param)], rank_fraction=rank_fraction)
    optimizer.captured_updates = {}
    param.grad = torch.randn(rows, cols)
    optimizer.step()
    update = optimizer.captured_updates["w"]
    rank = dion_rank(rank_fraction, rows, cols)
    assert int(torch.linalg.matrix_rank(update)) == rank
    # P has orthonormal columns and Q r unit columns, so ‖P Qᵀ‖_F² = ‖Q‖_F² = r
    assert math.isclose(float(update.square().sum()), rank, rel_tol=1e-5)


def test_the_base_momentum_is_off_so_dion_orthonormalises_its_own():
    model = StandInGPT()
    optimizer = build_optimizer(load_config("dion"), model)
    fake_gradients(model, 0)
    optimizer.step()
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0 and group["nesterov"] is False
    up = model.blocks[0].mlp.up.weight
    assert torch.equal(optimizer.state[up]["momentum_buffer"], up.grad)
    assert optimizer.ns_dtype_used(up.device) is None


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"mu": 1.0}, "mu"),
        ({"rank_fraction": 0.0}, "rank_fraction"),
        ({"rank_fraction": 1.5}, "rank_fraction"),
        ({"power_iters": 0}, "power_iters"),
        ({"power_iters": 1.0}, "power_iters"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"lr_scale": "fan"}, "lr_scale"),
    ],
)
def test_invalid_dion_options_raise_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Dion([nn.Parameter(torch.zeros(4, 3))], **kwargs)


@pytest.mark.parametrize(
    "key, value", [("momentum", 0.9), ("nesterov", True), ("ns_method", "quintic"), ("recycle_after", 5)]
)
def test_a_muon_option_in_a_dion_config_is_named_for_removal(key, value):
    with pytest.raises(ValueError, match=rf"optim\.matrix\.{key} is not an option of dion; remove it"):
        build_optimizer(load_config("dion", **{key: value}), StandInGPT())


def test_a_param_group_cannot_turn_the_base_momentum_back_on():
    with pytest.raises(ValueError, match="momentum"):
        Dion([{"params": [nn.Parameter(torch.zeros(4, 3))], "momentum": 0.9}])


def test_bench_optim_times_dion_beside_muon_with_the_polar_dtype_set_only_where_there_is_a_polar(capsys):
    from tests.test_scripts import load_script

    results = load_script("bench_optim").step_time_table(
        torch.device("cpu"), 1, warm_up=False, cases=["muon", "dion r=1/4"], shape="tiny_x16", ns_dtype="float32"
    )
    assert list(results) == ["muon", "dion r=1/4"]
    assert "| dion r=1/4 |" in capsys.readouterr().out
