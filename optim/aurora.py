"""Aurora's leverage-uniform polar factors (Tilde Research, arXiv 2606.27715, and its release code
github.com/tilde-research/aurora-release), on tensors of shape [..., m, n].

For a tall matrix (m > n) the polar factor's squared row norms are leverage scores that sum to
n, so rows with small momentum get small updates. Aurora looks for a semi-orthogonal U
(UᵀU = I) whose squared row norms are all n/m. Wide matrices are handled through the
transpose, and a square orthogonal matrix already has unit rows, so square input is plain polar.

The row statistics are computed in float32; only the polar calls run in the NS dtype
(dtype None: optim.polar.ns_dtype("auto", G.device)).

The squared row norms of polar(Y) for a tall Y of full column rank are Y's leverage scores,
diag(Y (YᵀY)⁻¹ Yᵀ), so vanilla Aurora's inner polar calls, which only feed those row norms, can
be replaced by one n×n Gram, a Cholesky factorisation and a triangular solve (leverage="exact",
about a seventeenth of a 12-step polar's work).
"""

import torch
from torch import Tensor

from .polar import polar

# How vanilla Aurora reads the row norms of polar(D ⊙ X) between rescalings: "polar" (the paper:
# run the polar) or "exact" (ours: the leverage scores, no polar until the last iteration).
AURORA_LEVERAGE = ("polar", "exact")


def _row_norms(X: Tensor) -> Tensor:
    return X.norm(dim=-1, keepdim=True)


# Ridges added to YᵀY, relative to its trace ‖Y‖_F². The small one counts a direction of singular
# value σ about as the 12-step simple-quintic polar (which divides by ‖Y‖_F) does: weight
# σ²/(σ² + λ), a half at σ = 1.7e-4·‖Y‖_F, where the polar's σ² is 0.38, and ~1 above 1e-3·‖Y‖_F.
# Where fp32 Cholesky fails with it (Y numerically rank-deficient), the large one, which it
# survives (measured in docs/optimizers.md).
LEVERAGE_RIDGE = 3e-8
LEVERAGE_FALLBACK_RIDGE = 1e-5


def leverage_scores(Y: Tensor) -> tuple[Tensor, Tensor]:
    """Ridge leverage scores diag(Y (YᵀY + λI)⁻¹ Yᵀ) of every tall Y [..., m, n] (m ≥ n), in fp32,
    as [..., m, 1], λ = LEVERAGE_RIDGE·‖Y‖_F² (LEVERAGE_FALLBACK_RIDGE·‖Y‖_F² for a matrix whose
    factorisation fails with it); and whether either factorisation succeeded ([..., 1, 1] bool:
    where neither did, as for a zero Y, the scores are meaningless and must not be used).

    With λ → 0 these are the squared row norms of polar(Y). No host sync: a failed Cholesky
    factorisation is reported by cholesky_ex, not raised, and the choice is a torch.where.
    """
    Y = Y.float()
    gram = Y.mT @ Y
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1)[..., None, None]
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    cholesky, info = torch.linalg.cholesky_ex(gram + (LEVERAGE_RIDGE * trace) * identity)
    fallback, fallback_info = torch.linalg.cholesky_ex(gram + (LEVERAGE_FALLBACK_RIDGE * trace) * identity)
    small_ridge_solved = (info == 0)[..., None, None]
    cholesky = torch.where(small_ridge_solved, cholesky, fallback)
    whitened = torch.linalg.solve_triangular(cholesky.mT, Y, upper=True, left=False)  # Y L⁻ᵀ
    solved = small_ridge_solved | (fallback_info == 0)[..., None, None]
    return whitened.square().sum(dim=-1, keepdim=True), solved


def aurora_polar_with_state(
    G: Tensor,
    row_correction: Tensor | None = None,
    iterations: int = 2,
    beta: float = 0.5,
    polar_method: str = "simple_quintic",
    polar_steps: int | None = None,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
    row_floor: float = 0.0,
    leverage: str = "polar",
) -> tuple[Tensor, Tensor | None]:
    """Vanilla Aurora, also returning the row correction for a warm start of the next call.

    With D = row_correction / ‖Xᵢ‖ (the reference's D = 1/‖Xᵢ‖ when row_correction is None),
    repeat `iterations` times: U = polar(D ⊙ X), and between repeats
    D ← D · ((n/m) / ‖Uᵢ‖²)^β. The returned correction is the D-update after the last polar,
    expressed relative to 1/‖Xᵢ‖ and normalised to mean 1 (polar is blind to a global scale of
    D), so that a later call on a similar matrix can start where this one stopped.
    row_correction has shape [..., max(m, n), 1]: one entry per row of the tall orientation.
    For square G the result is exactly polar(G) and the correction is returned unchanged.

    row_floor > 0 is our variant ("floored Aurora", docs/neuron_death.md): a row whose norm is
    below row_floor times the matrix's median row norm is *weak*. Its D is 1/(row_floor · median)
    instead of 1/‖Xᵢ‖, and it takes no part in the equalisation (its D is never rescaled), so its
    update stays proportional to its momentum, as under Muon, instead of being blown up to full
    size. The rows above the floor are made uniform as in vanilla Aurora; with every row above it
    the result is vanilla Aurora's exactly.

    leverage="exact" is our fast variant: the first iterations − 1 rescalings read the squared
    row norms as the exact leverage scores of D ⊙ X (leverage_scores) instead of running a
    polar, and only the last iteration runs one; a matrix whose factorisation fails keeps its D
    for that rescaling. "polar" is the paper's rule.
    """
    if iterations < 1:
        raise ValueError(f"pp_iterations must be >= 1, got {iterations}")
    if leverage not in AURORA_LEVERAGE:
        raise ValueError(f"pp_leverage must be one of {AURORA_LEVERAGE}, got {leverage!r}")
    m, n = G.shape[-2:]
    if m == n:
        return polar(G, polar_method, polar_steps, dtype), row_correction
    wide = m < n
    X = (G.mT if wide else G).float().contiguous()  # one memory layout: wide is exactly tall transposed
    rows, cols = X.shape[-2:]
    target = cols / rows  # the uniform squared row norm of a tall semi-orthogonal matrix
    row_norms = _row_norms(X)
    weak = None
    if row_floor > 0:
        floor = row_floor * row_norms.median(dim=-2, keepdim=True).values
        weak = row_norms < floor
        row_norms = torch.maximum(row_norms, floor)
    inverse_row_norm = 1.0 / row_norms.clamp_min(eps)
    D = inverse_row_norm if row_correction is None else inverse_row_norm * row_correction
    for iteration in range(iterations):
        if leverage == "exact" and iteration < iterations - 1:
            squared_row_norms, solved = leverage_scores(D * X)
        else:
            U = polar(D * X, polar_method, polar_steps, dtype)
            squared_row_norms, solved = _row_norms(U).square(), None
        rescale = (target / squared_row_norms.clamp_min(eps)) ** beta
        if solved is not None:
            rescale = torch.where(solved, rescale, 1.0)
        if weak is not None:
            rescale = torch.where(weak, 1.0, rescale)
        D = D * rescale
    correction = D / inverse_row_norm
    correction = correction / correction.mean(dim=-2, keepdim=True)
    U = U.to(G.dtype)
    return (U.mT if wide else U), correction


def aurora_polar(G: Tensor, **options) -> Tensor:
    """Vanilla Aurora's semi-orthogonal, row-norm-uniform polar factor: aurora_polar_with_state's
    U without a warm start, with its options (iterations = K, beta = β; row_floor > 0: the floored
    variant; leverage="exact": one polar)."""
    return aurora_polar_with_state(G, None, **options)[0]


def _leverage_system_matvec(U: Tensor, lam: Tensor, r: Tensor) -> Tensor:
    """(r I − P∘P) λ with P = U Uᵀ, without forming the m×m matrix P.

    ((P∘P) λ)ᵢ = Σⱼ ⟨Uᵢ, Uⱼ⟩² λⱼ = Uᵢᵀ (Uᵀ diag(λ) U) Uᵢ, an O(m n²) product.
    """
    weighted_gram = U.mT @ (lam * U)
    return r * lam - ((U @ weighted_gram) * U).sum(dim=-1, keepdim=True)


def _perron_bound(U: Tensor) -> Tensor:
    """An upper bound on the largest eigenvalue of P∘P: its largest row sum Σⱼ Pᵢⱼ².

    Σⱼ Pᵢⱼ² = Uᵢᵀ (UᵀU) Uᵢ, which equals the leverage ‖Uᵢ‖² when UᵀU = I.
    """
    return ((U @ (U.mT @ U)) * U).sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)


# Relative slack on top of the bound. The system is nearly singular on the manifold, and with
# 1e-3 twenty fp32 CG steps already amplify rounding into the multipliers (measured).
_REGULARISATION_MARGIN = 1e-2


def _centred(x: Tensor) -> Tensor:
    return x - x.mean(dim=-2, keepdim=True)


def _solve_leverage_multipliers(U: Tensor, q: Tensor, r: Tensor, cg_steps: int) -> Tensor:
    """A fixed number of conjugate-gradient steps on (r I − P∘P) λ = q over centred vectors.

    When every row norm is sqrt(r), the all-ones vector is the system's null direction, so the
    solve stays in the centred subspace. A fixed number of steps: no host sync.
    """
    lam = torch.zeros_like(q)
    residual = q.clone()
    direction = residual.clone()
    residual_sq = residual.square().sum(dim=-2, keepdim=True)
    for _ in range(cg_steps):
        A_direction = _centred(_leverage_system_matvec(U, direction, r))
        curvature = (direction * A_direction).sum(dim=-2, keepdim=True)
        # A converged (or numerically indefinite) system takes no further step.
        step = torch.where(curvature > 0, residual_sq / curvature, 0.0)
        lam = lam + step * direction
        residual = residual - step * A_direction
        new_residual_sq = residual.square().sum(dim=-2, keepdim=True)
        conjugation = torch.where(residual_sq > 0, new_residual_sq / residual_sq, 0.0)
        direction = residual + conjugation * direction
        residual_sq = new_residual_sq
    return _centred(lam)


def _retract(Y: Tensor, target_row_norm: float, rounds: int, polar_method, polar_steps, dtype, eps):
    """Back onto {UᵀU = I, ‖Uᵢ‖ = target}: alternately normalise rows and take the polar factor."""
    for _ in range(rounds):
        Y = Y * (target_row_norm / _row_norms(Y).clamp_min(eps))
        Y = polar(Y, polar_method, polar_steps, dtype)
    return Y


def riemannian_aurora_polar(
    G: Tensor,
    outer_steps: int = 3,
    cg_steps: int = 20,
    step_size: float = 0.1,
    retraction_rounds: int = 2,
    polar_method: str = "simple_quintic",
    polar_steps: int | None = None,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """Riemannian Aurora: ascend ⟨G, U⟩ over {UᵀU = I, ‖Uᵢ‖² = n/m} from U = polar(G).

    Each outer step projects G onto the manifold's tangent space at U,
    Z = G − U S − diag(λ) U with S = sym(UᵀG) − Uᵀ diag(λ) U, where λ solves
    (r I − P∘P) λ = q, qᵢ = ⟨Gᵢ, Uᵢ⟩ − ⟨(U sym(UᵀG))ᵢ, Uᵢ⟩ (centred), r = n/m; it then moves
    to U + step_size·Z and retracts. G is first scaled to ‖G‖_F = ‖U‖_F = sqrt(n) so that
    step_size is relative to the manifold, not to the gradient's magnitude (our choice: the
    reference does not say how G is scaled). Regularisation (also ours): r is raised to an
    upper bound on P∘P's largest eigenvalue, which keeps the system positive semi-definite
    off the manifold; on it the bound is n/m itself.
    """
    m, n = G.shape[-2:]
    if m == n:
        return polar(G, polar_method, polar_steps, dtype)
    wide = m < n
    X = (G.mT if wide else G).float().contiguous()  # one memory layout: wide is exactly tall transposed
    rows, cols = X.shape[-2:]
    r = cols / rows
    X = X * (cols**0.5 / X.norm(dim=(-2, -1), keepdim=True).clamp_min(eps))
    U = polar(X, polar_method, polar_steps, dtype)
    for _ in range(outer_steps):
        B = U.mT @ X
        B = 0.5 * (B + B.mT)
        q = _centred(((X - U @ B) * U).sum(dim=-1, keepdim=True))
        r_regularised = _perron_bound(U).clamp_min(r) * (1 + _REGULARISATION_MARGIN)
        lam = _solve_leverage_multipliers(U, q, r_regularised, cg_steps)
        S = B - U.mT @ (lam * U)
        Z = X - U @ S - lam * U
        U = _retract(U + step_size * Z, r**0.5, retraction_rounds, polar_method, polar_steps, dtype, eps)
    U = U.to(G.dtype)
    return U.mT if wide else U
