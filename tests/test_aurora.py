"""aurora_polar and riemannian_aurora_polar: uniform row norms at polar accuracy.

The reference gradient is the issue's: 3072×768 with log-normal row scales (σ = 1.2), on
which plain polar's row norms have a coefficient of variation (CV) of about 0.7.
"""

import pytest
import torch

from optim.aurora import aurora_polar, aurora_polar_with_state, leverage_scores, riemannian_aurora_polar
from optim.polar import polar, svd_polar


def row_scaled_gradient(m, n, sigma=1.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    row_scales = torch.exp(sigma * torch.randn(m, 1, generator=generator))
    return row_scales * torch.randn(m, n, generator=generator)


def row_norm_cv(U):
    norms = U.double().norm(dim=-1)
    return (norms.std() / norms.mean()).item()


def orthogonality_error(U):
    """‖UᵀU − I‖₂ on the tall orientation."""
    U = U.double() if U.shape[-2] >= U.shape[-1] else U.double().mT
    return torch.linalg.matrix_norm(U.mT @ U - torch.eye(U.shape[-1], dtype=torch.float64), ord=2).item()


def alignment(G, U):
    """⟨G, U⟩ / ‖G‖_*: 1 for the exact polar factor, the best any orthogonal-ish U can do."""
    return ((G.double() * U.double()).sum() / torch.linalg.matrix_norm(G.double(), ord="nuc")).item()


@pytest.fixture(scope="module")
def issue_gradient():
    G = row_scaled_gradient(3072, 768)
    return G, polar(G), aurora_polar(G, iterations=2, beta=0.5)


def test_aurora_k2_makes_row_norms_uniform_on_the_issue_gradient(issue_gradient):
    G, P, U = issue_gradient
    assert row_norm_cv(P) > 0.5  # the problem is there to begin with
    assert row_norm_cv(U) <= 0.03


def test_aurora_stays_semi_orthogonal_at_polar_accuracy(issue_gradient):
    G, P, U = issue_gradient
    assert orthogonality_error(U) <= max(1.5 * orthogonality_error(P), 0.02)


def test_aurora_on_a_wide_matrix_is_the_transpose_of_the_tall_case(issue_gradient):
    G, _, U = issue_gradient
    assert torch.equal(aurora_polar(G.mT.contiguous(), iterations=2, beta=0.5), U.mT)


def test_aurora_on_a_square_matrix_is_exactly_polar():
    G = row_scaled_gradient(48, 48)
    assert torch.equal(aurora_polar(G), polar(G))
    assert torch.equal(riemannian_aurora_polar(G), polar(G))


def test_aurora_k1_is_row_normalise_then_polar():
    G = row_scaled_gradient(96, 24)
    # Times the reciprocal, as Aurora computes D: in fp32 that differs from a division in the last bit.
    assert torch.equal(aurora_polar(G, iterations=1), polar(G * (1 / G.norm(dim=-1, keepdim=True))))


def test_aurora_row_norm_cv_falls_with_each_iteration():
    G = row_scaled_gradient(768, 192)
    cvs = [row_norm_cv(aurora_polar(G, iterations=k)) for k in (1, 2, 3)]
    assert cvs[0] > cvs[1] > cvs[2]


def test_aurora_handles_a_batch_like_each_matrix():
    G = torch.stack([row_scaled_gradient(64, 16, seed=s) for s in range(3)])
    batched = aurora_polar(G)
    for i in range(3):
        torch.testing.assert_close(batched[i], aurora_polar(G[i]), rtol=0, atol=1e-6)


def test_aurora_warm_start_with_one_polar_per_call_reaches_k2_quality():
    G = row_scaled_gradient(768, 192)
    correction = None
    for _ in range(4):
        U, correction = aurora_polar_with_state(G, correction, iterations=1)
    assert correction.shape == (768, 1)
    assert row_norm_cv(U) <= row_norm_cv(aurora_polar(G, iterations=2))


def test_aurora_without_correction_is_aurora_polar():
    G = row_scaled_gradient(64, 16)
    U, _ = aurora_polar_with_state(G, None, iterations=2, beta=0.5)
    assert torch.equal(U, aurora_polar(G, iterations=2, beta=0.5))


def test_riemannian_aurora_with_default_settings_is_finite_orthogonal_and_nearly_uniform():
    # The reference's 3 outer steps start from polar(G) (CV ~0.7) and leave a CV of about
    # 0.003-0.05 depending on the matrix (measured); more outer steps bring it down.
    G = row_scaled_gradient(256, 64)
    U = riemannian_aurora_polar(G)
    assert torch.isfinite(U).all()
    assert row_norm_cv(U) <= 0.06
    assert orthogonality_error(U) <= 0.02


def test_riemannian_aurora_converges_to_a_better_aligned_uniform_factor_than_vanilla():
    G = row_scaled_gradient(256, 64)
    U, vanilla = riemannian_aurora_polar(G, outer_steps=10), aurora_polar(G)
    assert row_norm_cv(U) <= min(0.005, row_norm_cv(vanilla))
    assert orthogonality_error(U) <= 0.02
    assert alignment(G, U) > alignment(G, vanilla)


def test_riemannian_aurora_on_a_wide_matrix_is_the_transpose_of_the_tall_case():
    G = row_scaled_gradient(128, 32)
    assert torch.equal(riemannian_aurora_polar(G.mT.contiguous()), riemannian_aurora_polar(G).mT)


def test_aurora_rejects_zero_iterations():
    with pytest.raises(ValueError, match="pp_iterations"):
        aurora_polar(torch.randn(8, 4), iterations=0)


# --- the floored variant (pp_row_floor, docs/neuron_death.md) ---


def gradient_with_stale_rows(m=256, n=64, stale=8, scale=1e-3, seed=0):
    """Rows 0..stale-1 are a thousandth of the others: a dead unit's decaying momentum row."""
    G = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    G[:stale] *= scale
    return G


def test_a_zero_gradient_row_stays_zero_and_a_vanishing_one_is_not_amplified():
    G = gradient_with_stale_rows()
    G[0] = 0.0
    vanilla = aurora_polar(G, dtype=torch.float32)
    floored = aurora_polar(G, dtype=torch.float32, row_floor=0.1)
    assert vanilla[0].abs().max() == 0 and floored[0].abs().max() == 0
    target = (64 / 256) ** 0.5
    assert vanilla[1:8].norm(dim=1).min() > 0.8 * target  # vanilla blows the stale rows up to full size
    assert floored[1:8].norm(dim=1).max() < 0.05 * target  # floored keeps them as small as their momentum


def test_the_floored_update_stays_semi_orthogonal_to_ns_accuracy():
    G = gradient_with_stale_rows(stale=30)
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 0.05)):
        assert orthogonality_error(aurora_polar(G, dtype=dtype, row_floor=0.1)) < tolerance


def test_rows_with_signal_are_uniform_and_with_every_row_above_the_floor_it_is_vanilla_aurora():
    G = gradient_with_stale_rows()
    floored = aurora_polar(G, dtype=torch.float32, row_floor=0.1)
    assert row_norm_cv(floored[8:]) < 0.05
    G = row_scaled_gradient(256, 64, sigma=0.3)  # every row well above a tenth of the median
    assert torch.equal(aurora_polar(G, row_floor=0.01), aurora_polar(G))
    wide = gradient_with_stale_rows().mT  # a wide matrix floors its columns, through the transpose
    assert torch.equal(aurora_polar(wide, row_floor=0.1), aurora_polar(wide.mT.contiguous(), row_floor=0.1).mT)


# --- exact leverage (pp_leverage: exact, optim=aurora_leverage) ---


def spectrum_decaying_to(m, n, smallest, seed=0):
    """A tall m×n matrix with log-spaced singular values from 1 down to `smallest` and log-normal row scales."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    singular_values = torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), n, dtype=torch.float64)
    row_scales = torch.exp(1.2 * torch.randn(m, 1, generator=generator, dtype=torch.float64))
    return (row_scales * (left * singular_values) @ right.T).float()


def test_leverage_scores_are_the_squared_row_norms_of_the_exact_polar_factor():
    G = torch.stack([row_scaled_gradient(512, 128, seed=s) for s in range(2)])
    Y = G / G.norm(dim=-1, keepdim=True)  # as Aurora's first rescaling sees it
    scores, solved = leverage_scores(Y)
    assert scores.shape == (2, 512, 1) and solved.all()
    torch.testing.assert_close(scores.double(), svd_polar(Y).square().sum(dim=-1, keepdim=True), rtol=1e-4, atol=1e-5)


def test_leverage_scores_count_a_weak_direction_as_the_ns_polar_does():
    # Singular values down to 1e-8 of the largest: the 12-step polar maps those below ~2e-4·‖G‖_F
    # to less than 1, the exact (SVD) polar maps every one to 1; the ridge follows the NS polar.
    G = spectrum_decaying_to(512, 128, 1e-8)
    scores, solved = leverage_scores(G)
    ns = polar(G, dtype=torch.float32).square().sum(dim=-1, keepdim=True)
    exact = svd_polar(G).square().sum(dim=-1, keepdim=True)
    assert solved.all()
    assert (scores - ns).abs().max() < 0.1 * (scores - exact).abs().max()


def test_a_numerically_rank_deficient_matrix_takes_the_fallback_ridge_and_a_zero_one_keeps_its_scaling():
    generator = torch.Generator().manual_seed(0)
    column = torch.randn(256, 1, generator=generator)
    rank_one = column @ torch.randn(1, 64, generator=generator)
    scores, solved = leverage_scores(torch.stack([rank_one, torch.zeros(256, 64)]))
    assert solved.tolist() == [[[True]], [[False]]]
    # The leverage of a b^T is (a_i / ‖a‖)^2: its one left singular vector, squared.
    torch.testing.assert_close(scores[0], (column / column.norm()).square(), rtol=0, atol=1e-5)
    for G in (rank_one, torch.zeros(256, 64)):
        assert torch.isfinite(aurora_polar(G, iterations=3, leverage="exact")).all()


def test_exact_leverage_aurora_k3_is_more_uniform_than_vanilla_k2_with_one_polar(issue_gradient, monkeypatch):
    G, _, vanilla = issue_gradient
    calls = []
    monkeypatch.setattr("optim.aurora.polar", lambda *args: calls.append(args) or polar(*args))
    U = aurora_polar(G, iterations=3, beta=0.5, leverage="exact")
    assert len(calls) == 1
    assert row_norm_cv(U) <= 0.5 * row_norm_cv(vanilla)
    assert orthogonality_error(U) <= max(1.5 * orthogonality_error(polar(G)), 0.02)


def test_exact_leverage_aurora_k2_is_vanilla_k2_up_to_the_inner_polars_error():
    # The same rescaling from the exact instead of the 12-step polar's row norms.
    G = row_scaled_gradient(768, 192)
    exact, vanilla = aurora_polar(G, leverage="exact", dtype=torch.float32), aurora_polar(G, dtype=torch.float32)
    torch.testing.assert_close(exact, vanilla, rtol=0, atol=2e-4)


def test_exact_leverage_on_an_ill_conditioned_matrix_is_as_uniform_as_vanilla_k2():
    G = spectrum_decaying_to(1024, 256, 1e-6)
    vanilla = row_norm_cv(aurora_polar(G, dtype=torch.float32))
    assert row_norm_cv(aurora_polar(G, iterations=3, leverage="exact", dtype=torch.float32)) <= vanilla


def test_exact_leverage_aurora_on_a_wide_matrix_is_the_transpose_of_the_tall_case():
    G = row_scaled_gradient(256, 64)
    tall = aurora_polar(G, iterations=3, leverage="exact")
    assert torch.equal(aurora_polar(G.mT.contiguous(), iterations=3, leverage="exact"), tall.mT)


def test_exact_leverage_keeps_zero_rows_zero_and_every_value_finite():
    G = gradient_with_stale_rows(stale=8, scale=1e-6)
    G[:3] = 0.0
    U = aurora_polar(G, iterations=3, leverage="exact")
    assert torch.isfinite(U).all() and U[:3].abs().max() == 0


def test_aurora_rejects_an_unknown_leverage_rule():
    with pytest.raises(ValueError, match="pp_leverage"):
        aurora_polar(torch.randn(8, 4), leverage="svd")
