"""Polar factor polar(G) = U Vᵀ (thin SVD G = U Σ Vᵀ) by matmul-only Newton–Schulz iterations.

Every function works on tensors of shape [..., m, n]; leading dimensions are a batch of
independent matrices. Each NS step applies an odd quintic p(x) = a x + b x³ + c x⁵ to every
singular value: X ← a X + (b A + c A²) X with A = X Xᵀ, computed on the wide orientation
(A is min(m, n)² there, the cheap side).

Two forms of the same iteration, equal in exact arithmetic (`newton_schulz`, `gram_newton_schulz`);
`polar` picks the Gram form in fp32 for matrices at least twice as long as they are wide.
"""

import torch
from torch import Tensor

# p(σ) = 2σ − 1.5σ³ + 0.5σ⁵: converges to 1 for σ in (0, 1] (p(1) = 1, p'(1) = 0).
SIMPLE_QUINTIC = (2.0, -1.5, 0.5)
# Keller Jordan's coefficients (torch.optim.Muon's default): fast, but the singular values
# plateau in about [0.7, 1.2] instead of converging to 1.
KELLER_JORDAN_QUINTIC = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel et al., arXiv 2505.16932, Algorithm 1): one minimax-optimal quintic
# per step for an initial spectrum in [1e-3, 1]; every step after the list repeats the last.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# The paper's half-precision safety factor: p(x) → p(x/1.01) for all but the last polynomial,
# so rounding that pushes a singular value slightly above 1 cannot blow up.
POLAR_EXPRESS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]) + (
    _POLAR_EXPRESS_RAW[-1],
)
# Same reason: the paper normalises by 1.01·‖G‖_F, not ‖G‖_F.
_POLAR_EXPRESS_NORM_SAFETY = 1.01

DEFAULT_STEPS = {"simple_quintic": 12, "quintic": 5, "polar_express": 5}
# polar() runs the Gram form (gram_newton_schulz) in these dtypes on matrices whose long side is
# at least this many times their short side: below about 1.7 (12 steps) the direct form costs less.
GRAM_DTYPES = (torch.float32, torch.float64)
GRAM_MIN_ASPECT = 2
POLAR_METHODS = tuple(DEFAULT_STEPS)
NS_DTYPES = ("auto", "bfloat16", "float32")


def ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the polar iteration runs in on `device`, for an ns_dtype setting.

    "auto" is bf16 on CUDA (the reference's choice, for tensor-core throughput) and fp32 on every
    other device. Not bf16 on CPUs that have bf16 units either: without them (AVX2-only CPUs) a
    bf16 matmul runs 11-22x slower than fp32, and with them the same config would give other
    numbers on another CPU; docs/benchmarks.md has the measurements. An explicit name wins.
    """
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in NS_DTYPES:
        raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {name!r}")
    return getattr(torch, name)


def ns_coefficients(method: str, steps: int | None = None) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each NS step for a method; steps=None takes the method's default."""
    if method not in DEFAULT_STEPS:
        raise ValueError(f"polar method must be one of {POLAR_METHODS}, got {method!r}")
    steps = DEFAULT_STEPS[method] if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ns_steps must be a positive int, got {steps!r}")
    if method == "simple_quintic":
        return [SIMPLE_QUINTIC] * steps
    if method == "quintic":
        return [KELLER_JORDAN_QUINTIC] * steps
    return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]


def polar(
    G: Tensor,
    method: str = "simple_quintic",
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """Approximate polar factor of every matrix in G [..., m, n], returned in G's dtype.

    The iteration runs in `dtype` (None: ns_dtype("auto", G.device)) after dividing each
    matrix by its Frobenius norm (clamped at eps), which puts every singular value in [0, 1].
    """
    if G.ndim < 2:
        raise ValueError(f"polar needs a tensor of shape [..., m, n], got shape {tuple(G.shape)}")
    coefficients = ns_coefficients(method, steps)
    *batch, m, n = G.shape
    X = G.reshape(-1, m, n).to(dtype or ns_dtype("auto", G.device))
    tall = m > n
    if tall:
        X = X.mT.contiguous()  # baddbmm would copy a transposed view on every step
    norm = X.norm(dim=(-2, -1), keepdim=True)
    if method == "polar_express":
        norm = norm * _POLAR_EXPRESS_NORM_SAFETY
    X = X / norm.clamp_min(eps)
    use_gram = X.dtype in GRAM_DTYPES and X.shape[-1] >= GRAM_MIN_ASPECT * X.shape[-2]
    X = (gram_newton_schulz if use_gram else newton_schulz)(X, coefficients)
    if tall:
        X = X.mT
    return X.reshape(*batch, m, n).to(G.dtype)


def newton_schulz(X: Tensor, coefficients) -> Tensor:
    """The NS steps on a wide stack X [B, n, m] (n <= m, spectral norm <= 1): per step two n×n×m
    products, A = X Xᵀ and (b A + c A²) X. The reference's form (bf16 on GPUs)."""
    for a, b, c in coefficients:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X


def gram_newton_schulz(X: Tensor, coefficients) -> Tensor:
    """The same steps on the n×n Gram matrix: each step is X ← P X with P = a I + b A + c A², a
    polynomial in A = X Xᵀ, so A ← P A P and the product Q of the P's stay n×n, and X₀ is
    touched only to form A (at the start and once halfway) and at the end (Q X₀). Per step 4n³
    multiply-adds instead of 2n²m + n³: over 12 steps, 2.7× fewer in all on an MLP's 1024×128
    matrices and 1.8× on gpt124m's 3072×768.

    Rounding builds up in A instead of being recomputed from X every step; the halfway restart
    (A from Q X₀) cuts it about 5×. In fp32, on bench_optim's row-scaled 3072×768 input, the
    result lies 3e-5 (spectral norm) from the float64 iteration, against 9e-7 for the direct form
    in fp32 and 1.5e-2 for the direct form in bf16. Not used in bf16, where Gram iterations are
    published to need more restarts.
    """
    A = X @ X.mT
    Q = None
    restart, last = len(coefficients) // 2 - 1, len(coefficients) - 1
    for step, (a, b, c) in enumerate(coefficients):
        P = torch.baddbmm(A, A, A, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = P if Q is None else P @ Q
        if step == restart:
            Y = Q @ X
            A = Y @ Y.mT
        elif step < last:
            A = P @ A @ P
    return Q @ X


def svd_polar(G: Tensor) -> Tensor:
    """Exact polar factor U Vᵀ in float64 (the reference the NS methods are tested against)."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh
