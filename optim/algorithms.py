"""The optimizers: thin subclasses of MatrixOptimizer that pick defaults and an update direction.

Every direction below maps a stack X [B, m, n] of (Nesterov) momentum matrices to the update
before the lr η and the per-shape lr scale; docs/optimizers.md states each rule in full.
"""

import math

import torch
from torch import Tensor

from .aurora import AURORA_LEVERAGE, aurora_polar_with_state, riemannian_aurora_polar
from .matrix import ADAMW, MatrixOptimizer, is_number, require
from .polar import ns_dtype, polar


def _polar(X: Tensor, group: dict) -> Tensor:
    return polar(X, group["ns_method"], group["ns_steps"], ns_dtype(group["ns_dtype"], X.device))


class Muon(MatrixOptimizer):
    """Muon: U = polar(X). Defaults: the modded-nanoGPT optimization-track baseline (lr 0.025, wd 0.05)."""

    def __init__(self, params, lr: float = 0.025, weight_decay: float = 0.05, **kwargs):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)

    def update_direction(self, X, group, state):
        return _polar(X, group), state


NORMUON_AXES = ("rows", "neurons")


class NorMuon(MatrixOptimizer):
    """NorMuon (arXiv 2510.05491): O = polar(X); per row v ← β₂v + (1−β₂)·mean_j O²ᵢⱼ;
    Ô = O / (sqrt(v) + ε), rescaled to ‖O‖_F.

    normalize: "rows" (each row of W as stored, the paper's statement) or "neurons" (each row of
        the tall orientation: the columns of a wide matrix, so that an MLP's down-projection is
        normalised per hidden unit, as the optimization track's NorMuon record does).
    """

    def __init__(
        self,
        params,
        lr: float = 0.025,
        weight_decay: float = 0.05,
        beta2: float = 0.95,
        eps: float = 1e-10,
        normalize: str = "rows",
        **kwargs,
    ):
        rule_options = dict(beta2=beta2, eps=eps, normalize=normalize)
        super().__init__(params, lr=lr, weight_decay=weight_decay, rule_options=rule_options, **kwargs)

    def check_rule_options(self, group):
        require(is_number(group["beta2"]) and 0 <= group["beta2"] < 1, "beta2", group["beta2"], "in [0, 1)")
        require(is_number(group["eps"]) and group["eps"] >= 0, "eps", group["eps"], "a number >= 0")
        require(group["normalize"] in NORMUON_AXES, "normalize", group["normalize"], f"one of {NORMUON_AXES}")

    @staticmethod
    def _mean_axis(shape, group) -> int:
        """The axis averaged over: -1 gives a second moment per row, -2 one per column."""
        rows, cols = shape[-2:]
        return -2 if group["normalize"] == "neurons" and rows < cols else -1

    def init_rule_state(self, shape, group, device):
        per_column = self._mean_axis(shape, group) == -2
        return {"row_second_moment": torch.zeros(*((1, shape[1]) if per_column else (shape[0], 1)), device=device)}

    def update_direction(self, X, group, state):
        O = _polar(X, group).float()
        mean = O.square().mean(dim=self._mean_axis(X.shape, group), keepdim=True)
        second_moment = state["row_second_moment"].lerp(mean, 1 - group["beta2"])
        normalised = O / (second_moment.sqrt() + group["eps"])
        frobenius = O.norm(dim=(-2, -1), keepdim=True)
        normalised = normalised * (frobenius / (normalised.norm(dim=(-2, -1), keepdim=True) + group["eps"]))
        return normalised.to(X.dtype), {"row_second_moment": second_moment}


class UNorMuon(NorMuon):
    """U-NorMuon: NorMuon whose tall-matrix update is scaled by sqrt(n/m), so that under the
    default lr scale its rows have norm sqrt(n/m) (a semi-orthogonal matrix's) instead of 1."""

    def update_direction(self, X, group, state):
        normalised, state = super().update_direction(X, group, state)
        rows, cols = X.shape[-2:]
        return normalised * math.sqrt(min(1.0, cols / rows)), state


AURORA_VARIANTS = ("vanilla", "riemannian")
AURORA_APPLY_TO = ("tall", "wide", "rectangular")


class Aurora(MatrixOptimizer):
    """Aurora (Tilde Research, arXiv 2606.27715): a semi-orthogonal update with uniform row norms.

    variant: "vanilla" (row-rescaled polar, K = pp_iterations, β = pp_beta) or "riemannian".
    apply_to: "tall" (the paper: only rows > cols get Aurora, the rest plain polar), "wide" (only
        rows < cols: an MLP's down-projection, as the later optimization-track records), or
        "rectangular" (the release code: every non-square matrix, wide ones via the transpose).
    pp_warm_start: carry the vanilla row scaling D over from the previous step (per matrix),
        so that pp_iterations=1 does the work of more (our extension, off by default).
    pp_leverage: "polar" (the paper: each of the K rescalings runs a polar) or "exact" (ours: the
        first K − 1 rescalings read the polar's squared row norms as exact leverage scores, one
        Gram and one Cholesky solve each, and only the last runs a polar: one polar per step).
    pp_row_floor: our variant, off (0) by default: rows whose momentum norm is below this
        fraction of the matrix's median row norm are not blown up to full size (their update
        stays proportional to their momentum); see optim/aurora.py and docs/neuron_death.md.
    """

    def __init__(
        self,
        params,
        lr: float = 0.05,
        weight_decay: float = 0.025,
        variant: str = "vanilla",
        apply_to: str = "tall",
        pp_iterations: int = 2,
        pp_beta: float = 0.5,
        pp_eps: float = 1e-7,
        pp_warm_start: bool = False,
        pp_leverage: str = "polar",
        pp_row_floor: float = 0.0,
        riemannian_outer_steps: int = 3,
        riemannian_cg_steps: int = 20,
        riemannian_step_size: float = 0.1,
        riemannian_retraction_rounds: int = 2,
        **kwargs,
    ):
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            rule_options=dict(
                variant=variant,
                apply_to=apply_to,
                pp_iterations=pp_iterations,
                pp_beta=pp_beta,
                pp_eps=pp_eps,
                pp_warm_start=pp_warm_start,
                pp_leverage=pp_leverage,
                pp_row_floor=pp_row_floor,
                riemannian_outer_steps=riemannian_outer_steps,
                riemannian_cg_steps=riemannian_cg_steps,
                riemannian_step_size=riemannian_step_size,
                riemannian_retraction_rounds=riemannian_retraction_rounds,
            ),
            **kwargs,
        )

    def check_rule_options(self, group):
        require(group["variant"] in AURORA_VARIANTS, "variant", group["variant"], f"one of {AURORA_VARIANTS}")
        require(group["apply_to"] in AURORA_APPLY_TO, "apply_to", group["apply_to"], f"one of {AURORA_APPLY_TO}")
        for key in ("pp_iterations", "riemannian_outer_steps", "riemannian_cg_steps", "riemannian_retraction_rounds"):
            value = group[key]
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key, value, "an int >= 1")
        require(is_number(group["pp_beta"]) and group["pp_beta"] >= 0, "pp_beta", group["pp_beta"], "a number >= 0")
        require(is_number(group["pp_eps"]) and group["pp_eps"] > 0, "pp_eps", group["pp_eps"], "a number > 0")
        require(isinstance(group["pp_warm_start"], bool), "pp_warm_start", group["pp_warm_start"], "a bool")
        leverage = group["pp_leverage"]
        require(leverage in AURORA_LEVERAGE, "pp_leverage", leverage, f"one of {AURORA_LEVERAGE}")
        floor = group["pp_row_floor"]
        floor_ok = is_number(floor) and 0 <= floor < 1
        require(floor_ok, "pp_row_floor", floor, "a number in [0, 1) (0: the paper's Aurora)")
        step_size = group["riemannian_step_size"]
        require(is_number(step_size) and step_size > 0, "riemannian_step_size", step_size, "a number > 0")

    @staticmethod
    def uses_aurora(rows: int, cols: int, group: dict) -> bool:
        if rows == cols:
            return False
        return group["apply_to"] == "rectangular" or group["apply_to"] == ("tall" if rows > cols else "wide")

    def init_rule_state(self, shape, group, device):
        rows, cols = shape
        if group["pp_warm_start"] and group["variant"] == "vanilla" and self.uses_aurora(rows, cols, group):
            return {"row_correction": torch.ones(max(rows, cols), 1, device=device)}
        return {}

    def update_direction(self, X, group, state):
        rows, cols = X.shape[-2:]
        if not self.uses_aurora(rows, cols, group):
            return _polar(X, group), state
        polar_options = dict(
            polar_method=group["ns_method"],
            polar_steps=group["ns_steps"],
            dtype=ns_dtype(group["ns_dtype"], X.device),
            eps=group["pp_eps"],
        )
        if group["variant"] == "riemannian":
            U = riemannian_aurora_polar(
                X,
                outer_steps=group["riemannian_outer_steps"],
                cg_steps=group["riemannian_cg_steps"],
                step_size=group["riemannian_step_size"],
                retraction_rounds=group["riemannian_retraction_rounds"],
                **polar_options,
            )
            return U, state
        U, row_correction = aurora_polar_with_state(
            X,
            state.get("row_correction"),
            group["pp_iterations"],
            group["pp_beta"],
            **polar_options,
            row_floor=group["pp_row_floor"],
            leverage=group["pp_leverage"],
        )
        return U, ({"row_correction": row_correction} if "row_correction" in state else state)


class AdamW(MatrixOptimizer):
    """AdamW for every parameter, in the same object and code path as the matrix optimizers
    (for the AdamW baseline: its hidden matrices take an AdamW group of their own)."""

    default_kind = ADAMW

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.95), eps: float = 1e-10, weight_decay: float = 0.0, debug=False
    ):
        self._adamw_options = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, debug=debug)

    def add_param_group(self, param_group):
        if param_group.setdefault("kind", ADAMW) != ADAMW:
            raise ValueError(f"kind must be {ADAMW!r} for AdamW, got {param_group['kind']!r}")
        for key, value in self._adamw_options.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
