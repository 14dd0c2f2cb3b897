"""The benchmark's statistics (eval/stats.py) against hand-computed values and the optimization
track's own published numbers (records/track_3_optimization/README.md in modded-nanogpt)."""

from __future__ import annotations

import math

import pytest

from eval import stats


def test_track_pass_rule_matches_its_worked_examples():
    # "for a single non-cherry-picked run, any val loss below 3.276 suffices, and for n=4 runs,
    # any average below 3.278 suffices"
    assert stats.track_passes([3.2759]) and not stats.track_passes([3.2761])
    assert stats.track_passes([3.2779] * 4) and not stats.track_passes([3.2781] * 4)
    # The Aurora record, n = 20: mean 3.27885 passes at step 3175 (statistic +0.00517 in its README,
    # from the unrounded mean), 3.28039 at step 3150 does not (-0.00173)
    assert stats.track_pass_statistic([3.27885] * 20) == pytest.approx(0.00514, abs=5e-5)
    assert stats.track_pass_statistic([3.28039] * 20) == pytest.approx(-0.00174, abs=5e-5)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # result #13 (3210 steps, 3.2785, n=10) against #8 (3250, 3.2778; the README's n's: 10 and 16)
        (([3.2785] * 16, 3210), ([3.2778] * 10, 3250), 0.0027),
        # #13 against #11: 15 steps, the same loss, n = 16 and 10 -> 0.00167
        (([3.2785] * 16, 3210), ([3.2785] * 10, 3225), 0.00167),
        # the Muon hyperparameters of #12 (3325 steps, 3.2790, n=20) against #6 (3375, 3.2788, n=20) -> 0.00648
        (([3.2790] * 20, 3325), ([3.2788] * 20, 3375), 0.00648),
    ],
)
def test_track_pairwise_rule_reproduces_the_readmes_calculations(a, b, expected):
    assert stats.track_pairwise_statistic(a[0], a[1], b[0], b[1]) == pytest.approx(expected, abs=5e-5)


def test_t_distribution_matches_known_values():
    assert stats.t_cdf(0.0, 5) == pytest.approx(0.5)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-6)  # tables
    assert stats.t_quantile(0.975, 19) == pytest.approx(2.0930241, rel=1e-6)
    assert stats.t_cdf(-2.0, 1e7) == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)), rel=1e-5)  # the normal limit


def test_t_tests_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    losses = [3.275, 3.277, 3.279, 3.276]
    t, p = stats.one_sided_t_test(losses)
    expected = scipy_stats.ttest_1samp(losses, 3.28, alternative="less")
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)
    a, b = [3.1, 3.2, 3.25], [3.3, 3.28, 3.35, 3.31]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert stats.welch_t_test(a, b) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)


def test_mean_ci_is_the_student_interval():
    mean, half = stats.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert stats.mean_ci([5.0]) == (5.0, None)


def test_a_t_test_needs_spread():
    with pytest.raises(ValueError, match="at least two"):
        stats.one_sided_t_test([3.27])
    with pytest.raises(ValueError, match="spread"):
        stats.welch_t_test([1.0, 1.0], [2.0, 2.0])


def test_tokens_to_reach_interpolates_between_validations():
    curve = [(100, 4.0), (200, 3.0), (300, 2.5)]
    assert stats.tokens_to_reach(curve, 3.5) == 150
    assert stats.tokens_to_reach(curve, 4.0) == 100
    assert stats.tokens_to_reach(curve, 2.0) is None


def test_speedup_is_the_baselines_tokens_over_the_candidates_to_its_final_loss():
    baseline = [(100, 4.0), (200, 3.0), (400, 2.5)]
    candidate = [(100, 3.5), (200, 2.5), (400, 2.0)]
    assert stats.speedup(baseline, candidate) == 2.0
    assert stats.speedup(baseline, [(400, 3.0)]) is None
