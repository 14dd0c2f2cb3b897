"""Dion (Ahn et al. 2025, arXiv 2504.05295; github.com/microsoft/dion): a low-rank orthonormal update.

Per matrix, with its own momentum M and a right factor Q (r columns):

    M ← M + G
    P ← orth(M Q)             (Householder QR; `power_iters` rounds of P, then R ← Mᵀ P, Q ← R)
    R ← Mᵀ P
    M ← M − (1 − μ) P Rᵀ      (error feedback: M keeps what the rank-r update leaves out)
    Q ← R / (‖R‖_col + ε)
    update = P Qᵀ             (times lr · sqrt(rows/cols): lr_scale "spectral")

A wide matrix (rows < cols) runs the same rule on its transpose, so that P is the tall factor.
Dion's momentum is not the base's lerp momentum, so the base's is switched off (μ_base = 0 and no
Nesterov: the base hands the gradient G through exactly) and M and Q are rule state: stacked,
computed by the rank that owns the matrix and gathered to every rank like the update itself.
"""

import math

import torch
from torch import Tensor

from .matrix import MatrixOptimizer, is_number, require

# The base's momentum and polar options: Dion has its own momentum (mu) and orthonormalises by QR.
# Base options Dion refuses: its momentum is mu and it runs no polar; unit recycling (optim/recycle.py)
# would reset the base buffer, which holds G here, and leave Dion's own M as it was.
NOT_DION_OPTIONS = ("momentum", "nesterov", "ns_method", "ns_steps", "ns_dtype", "recycle_after", "recycle_below")
# Q's first value, the same for every matrix of a shape: all ranks agree without a broadcast, and
# the global random stream (data order, bit-exact resume) is left alone.
INITIAL_Q_SEED = 0


def dion_rank(rank_fraction: float, rows: int, cols: int) -> int:
    """Columns of the low-rank factors: rank_fraction · min(rows, cols), rounded up."""
    return min(math.ceil(rank_fraction * min(rows, cols)), rows, cols)


def initial_q(rows: int, cols: int, rank_fraction: float, device: torch.device) -> Tensor:
    """Q before the first step: a standard Gaussian min(rows, cols) × r matrix (seed INITIAL_Q_SEED)."""
    generator = torch.Generator().manual_seed(INITIAL_Q_SEED)
    return torch.randn(min(rows, cols), dion_rank(rank_fraction, rows, cols), generator=generator).to(device)


def dion_update(
    G: Tensor, M: Tensor, Q: Tensor, mu: float, power_iters: int = 1, epsilon: float = 1e-8
) -> tuple[Tensor, Tensor, Tensor]:
    """(update P Qᵀ, new M, new Q) of stacks G, M [B, m, n] and Q [B, min(m, n), r], all float32.

    A matrix whose M is all zero gets a zero update, keeps M and takes Q column-normalised (the
    reference's guard against QR of zero), chosen by masks, not by a host-side test.
    """
    transpose = G.shape[-2] < G.shape[-1]
    M = M + G
    tall = M.mT if transpose else M
    R = Q
    for _ in range(power_iters):
        P = torch.linalg.qr(tall @ R).Q
        R = tall.mT @ P
    zero = (M == 0).all(dim=(-2, -1), keepdim=True)
    P = P.nan_to_num() * ~zero
    R = torch.where(zero, Q, R.nan_to_num())
    tall = tall - (1 - mu) * (P @ R.mT)
    Q = R / (R.norm(dim=-2, keepdim=True) + epsilon)
    update = P @ Q.mT
    if transpose:
        return update.mT, tall.mT, Q
    return update, tall, Q


class Dion(MatrixOptimizer):
    """Dion on the matrix groups (module docstring), AdamW on the rest.

    Defaults: microsoft/dion's configs/dion_160m.yaml (lr 0.02, mu 0.95, weight decay 0.01, rank
    fraction 0.5), its lr scale sqrt(fan_out/fan_in) and its power_iters 1 and epsilon 1e-8.

    mu: μ of the error feedback: M loses (1 − μ) of the rank-r part the update took and keeps the rest.
    rank_fraction: r / min(rows, cols) in (0, 1]; 1 is a full-rank (Muon-like) update.
    power_iters: rounds of power iteration per step (the reference's default: 1, warm-started by Q).
    epsilon: added to Q's column norms.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        weight_decay: float = 0.01,
        mu: float = 0.95,
        rank_fraction: float = 0.5,
        power_iters: int = 1,
        epsilon: float = 1e-8,
        lr_scale: str = "spectral",
        **kwargs,
    ):
        for key in NOT_DION_OPTIONS:
            if key in kwargs:  # worded as Python's own, so that build_optimizer names the config key
                raise TypeError(f"Dion() got an unexpected keyword argument '{key}' (optim/dion.py, NOT_DION_OPTIONS)")
        rule_options = {"mu": mu, "rank_fraction": rank_fraction, "power_iters": power_iters, "epsilon": epsilon}
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=0.0,
            nesterov=False,
            lr_scale=lr_scale,
            rule_options=rule_options,
            **kwargs,
        )

    def check_rule_options(self, group):
        require(group["momentum"] == 0 and not group["nesterov"], "momentum", group["momentum"], "0 (Dion's is mu)")
        require(is_number(group["mu"]) and 0 <= group["mu"] < 1, "mu", group["mu"], "in [0, 1)")
        fraction = group["rank_fraction"]
        require(is_number(fraction) and 0 < fraction <= 1, "rank_fraction", fraction, "in (0, 1]")
        iters = group["power_iters"]
        iters_ok = isinstance(iters, int) and not isinstance(iters, bool) and iters >= 1
        require(iters_ok, "power_iters", iters, "an int >= 1")
        require(is_number(group["epsilon"]) and group["epsilon"] > 0, "epsilon", group["epsilon"], "a number > 0")

    def ns_dtype_used(self, device):
        return None  # no polar iteration: the QR runs in float32

    def init_rule_state(self, shape, group, device):
        rows, cols = shape
        return {
            "dion_momentum": torch.zeros(rows, cols, device=device),
            "dion_q": initial_q(rows, cols, group["rank_fraction"], device),
        }

    def update_direction(self, X, group, state):
        update, momentum, q = dion_update(
            X.float(), state["dion_momentum"], state["dion_q"], group["mu"], group["power_iters"], group["epsilon"]
        )
        return update.to(X.dtype), {"dion_momentum": momentum, "dion_q": q}
