"""polar(): every NS method against the float64 SVD polar factor.

Test matrices have a known spectrum (singular values log-spaced over [0.1, 1], condition 10),
so each method's error is its own and not the luck of a random draw. The error measured is
the spectral norm ‖polar(G) − U Vᵀ‖₂, which equals max |p(σ) − 1| over the computed
singular values. Tolerances (each well above what we measure, well below failure):

    method           steps  dtype     bound   why
    simple_quintic   12     float32   1e-4    converges (p(1) = 1, p'(1) = 0)
    simple_quintic   12     bfloat16  0.04    bf16 rounding, ~0.015 measured
    quintic          5      both      0.35    Keller Jordan's coefficients plateau in ~[0.7, 1.2]
    polar_express    5      both      0.16    minimax for spectra down to 1e-3, ~0.125 measured
    polar_express    10     float32   1e-3    later steps converge
"""

import pytest
import torch

from optim.polar import (
    POLAR_EXPRESS,
    POLAR_METHODS,
    gram_newton_schulz,
    newton_schulz,
    ns_coefficients,
    polar,
    svd_polar,
)

TOLERANCE = {
    ("simple_quintic", None, torch.float32): 1e-4,
    ("simple_quintic", None, torch.bfloat16): 0.04,
    ("quintic", None, torch.float32): 0.35,
    ("quintic", None, torch.bfloat16): 0.35,
    ("polar_express", None, torch.float32): 0.16,
    ("polar_express", None, torch.bfloat16): 0.16,
    ("polar_express", 10, torch.float32): 1e-3,
}
SHAPES = {"tall": (64, 24), "wide": (24, 64), "square": (40, 40), "batched": (3, 2, 48, 20)}


def matrix_with_spectrum(*shape, condition=10.0, seed=0):
    """A [..., m, n] float32 tensor whose singular values are log-spaced in [1/condition, 1]."""
    generator = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, dtype=torch.float64, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, dtype=torch.float64, generator=generator))
    singular_values = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), k, dtype=torch.float64)
    return ((U * singular_values.unsqueeze(-2)) @ V.mT).float()


def spectral_error(X, P):
    return torch.linalg.matrix_norm(X.double() - P, ord=2).max().item()


@pytest.mark.parametrize("shape_name", SHAPES)
@pytest.mark.parametrize("method, steps, dtype", TOLERANCE)
def test_polar_is_within_documented_tolerance_of_svd_polar(method, steps, dtype, shape_name):
    G = matrix_with_spectrum(*SHAPES[shape_name])
    X = polar(G, method, steps, dtype=dtype)
    assert X.shape == G.shape and X.dtype == G.dtype
    assert spectral_error(X, svd_polar(G)) <= TOLERANCE[(method, steps, dtype)]


@pytest.mark.parametrize("method", POLAR_METHODS)
def test_the_gram_form_is_the_direct_iteration_in_exact_arithmetic(method):
    # float64 stands in for exact arithmetic: the two forms then agree to its rounding.
    X = torch.randn(3, 16, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X = X / X.norm(dim=(-2, -1), keepdim=True)
    coefficients = ns_coefficients(method)
    torch.testing.assert_close(gram_newton_schulz(X, coefficients), newton_schulz(X, coefficients), rtol=0, atol=1e-12)


def test_float32_polar_of_a_long_row_scaled_matrix_stays_near_the_float64_iteration():
    # polar() takes the Gram form here (aspect 8): 3e-6 measured, bf16's direct form ~1e-2.
    generator = torch.Generator().manual_seed(0)
    G = torch.randn(1024, 128, generator=generator) * torch.exp(1.2 * torch.randn(1024, 1, generator=generator))
    exact = polar(G.double(), dtype=torch.float64)
    assert torch.linalg.matrix_norm(polar(G, dtype=torch.float32).double() - exact, ord=2) < 2e-5


def test_polar_is_invariant_to_the_scale_of_its_input():
    G = matrix_with_spectrum(32, 16)
    torch.testing.assert_close(polar(G * 1e3, dtype=torch.float32), polar(G, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_batched_polar_equals_polar_of_each_matrix():
    G = matrix_with_spectrum(4, 32, 16)
    batched = polar(G, dtype=torch.float32)
    for i in range(4):
        torch.testing.assert_close(batched[i], polar(G[i], dtype=torch.float32), rtol=0, atol=1e-6)


def test_polar_of_a_zero_matrix_is_zero_not_nan():
    assert torch.equal(polar(torch.zeros(8, 4)), torch.zeros(8, 4))


def test_polar_express_repeats_its_last_polynomial_after_the_list():
    coefficients = ns_coefficients("polar_express", 12)
    assert coefficients[: len(POLAR_EXPRESS)] == list(POLAR_EXPRESS)
    assert coefficients[len(POLAR_EXPRESS) :] == [POLAR_EXPRESS[-1]] * (12 - len(POLAR_EXPRESS))


@pytest.mark.parametrize("method, steps", [("newton", None), ("quintic", 0), ("quintic", 2.5)])
def test_polar_rejects_unknown_methods_and_bad_step_counts(method, steps):
    with pytest.raises(ValueError):
        polar(torch.randn(4, 4), method, steps)


def test_polar_rejects_a_vector():
    with pytest.raises(ValueError, match="shape"):
        polar(torch.randn(4))
