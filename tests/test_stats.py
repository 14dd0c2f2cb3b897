"""The benchmark's statistics (eval/stats.py) against hand-computed values and the optimization
track's own published numbers (records/track_3_optimization/README.md in modded-nanogpt)."""

from __future__ import annotations

import math

import numpy as np
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


@pytest.mark.parametrize("losses", [[3.276], [3.278] * 4, [3.277, 3.279, 3.2775, 3.2785]])
def test_a_mean_exactly_on_the_margin_passes_whatever_the_rounding(losses):
    # (3.28 − 3.278)·2 rounds to 0.0039999999999996: on the margin, within RULE_TOLERANCE
    assert stats.track_pass_statistic(losses) == pytest.approx(stats.TRACK_MARGIN, abs=1e-12)
    assert stats.track_passes(losses)
    assert not stats.track_passes([v + 1e-6 for v in losses])  # a millionth of a nat above the mean it needs


def test_the_pairwise_winner_is_named_whichever_way_round_the_attempts_come():
    better, worse = ([3.270] * 4, 3000), ([3.280] * 4, 3000)
    forward = stats.track_pairwise_statistic(*better, *worse)
    backward = stats.track_pairwise_statistic(*worse, *better)
    assert forward == pytest.approx(0.01 / math.sqrt(0.5)) and backward == -forward
    assert stats.track_pairwise_winner(forward) == "A" and stats.track_pairwise_winner(backward) == "B"
    assert stats.track_pairwise_winner(0.0039) is None and stats.track_pairwise_winner(-0.0039) is None
    assert stats.track_pairwise_winner(-stats.TRACK_MARGIN + 5e-16) == "B"  # exactly on the margin, rounded down


@pytest.mark.parametrize("seed", range(40))
def test_the_statistics_agree_with_scipy_on_random_inputs(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = list(rng.normal(3.28, rng.uniform(1e-4, 0.1), size=rng.integers(2, 30)))
    b = list(rng.normal(3.28, rng.uniform(1e-4, 0.1), size=rng.integers(2, 30)))
    target = float(rng.normal(3.28, 0.01))
    n = len(a)
    mean, half = stats.mean_ci(a)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(a), scale=scipy_stats.sem(a))
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)
    assert stats.sample_std(a) == pytest.approx(np.std(a, ddof=1), rel=1e-12)
    # the one-sided test from its formula: t = (mean − target)/(s/√n), p = P(T_{n−1} ≤ t)
    t = (np.mean(a) - target) / (np.std(a, ddof=1) / math.sqrt(n))
    assert stats.one_sided_t_test(a, target) == pytest.approx((t, scipy_stats.t.cdf(t, n - 1)), rel=1e-9)
    # Welch from its formula: Welch–Satterthwaite degrees of freedom, two-sided p
    va, vb = np.var(a, ddof=1) / n, np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (len(b) - 1))
    assert stats.welch_t_test(a, b) == pytest.approx((t, 2 * scipy_stats.t.sf(abs(t), dof)), rel=1e-9)
    pooled = math.sqrt(((n - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / (n + len(b) - 2))
    assert stats.pooled_std(a, b) == pytest.approx(pooled, rel=1e-12)
    expected = (target - np.mean(a)) * math.sqrt(n)
    assert stats.track_pass_statistic(a, target) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_the_t_tests_match_scipy_on_the_tracks_numbers():
    scipy_stats = pytest.importorskip("scipy.stats")
    losses = [3.275, 3.277, 3.279, 3.276]
    t, p = stats.one_sided_t_test(losses)
    expected = scipy_stats.ttest_1samp(losses, 3.28, alternative="less")
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)
    a, b = [3.1, 3.2, 3.25], [3.3, 3.28, 3.35, 3.31]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert stats.welch_t_test(a, b) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)


def test_mean_ci_is_the_student_interval_and_undefined_for_one_value():
    mean, half = stats.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t_{0.975, 2} from tables
    assert stats.mean_ci([5.0]) == (5.0, None)
    assert stats.sample_std([5.0]) is None and stats.pooled_std([5.0], [6.0]) is None


def test_a_t_test_that_cannot_run_says_the_real_reason():
    with pytest.raises(ValueError, match=r"two seeds or more in a group \(1 here\)"):
        stats.one_sided_t_test([3.27])
    with pytest.raises(ValueError, match=r"two seeds or more in a group \(1 here\)"):
        stats.welch_t_test([1.0, 1.5], [2.0])
    with pytest.raises(ValueError, match="identical within each group: no spread"):
        stats.welch_t_test([1.0, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError, match="identical within each group: no spread"):
        stats.one_sided_t_test([3.27, 3.27, 3.27])
    assert stats.welch_t_test([1.0, 1.0], [2.0, 2.5])[1] < 1  # spread in one group is enough


def test_first_arrival_interpolates_and_marks_an_upper_bound():
    curve = [(100, 4.0), (200, 3.0), (300, 2.5)]
    assert stats.first_arrival(curve, 3.5) == (150, False)
    assert stats.first_arrival(curve, 4.0) == (100, True)  # at the first validation: reached by 100, perhaps sooner
    assert stats.first_arrival(curve, 2.0) is None


def test_a_non_finite_point_has_not_reached_the_target():
    nan = float("nan")
    assert stats.first_arrival([(100, 4.0), (200, nan), (300, 2.5)], 3.0) == (300, True)  # no interpolation across NaN
    assert stats.first_arrival([(100, nan), (200, nan)], 3.0) is None
    assert stats.first_arrival([(100, 4.0), (200, math.inf), (300, 3.5), (400, 2.5)], 3.0) == (350, False)


def test_speedup_is_first_arrival_against_first_arrival_at_the_same_target():
    baseline = [(100, 4.0), (200, 3.0), (400, 2.5)]
    candidate = [(100, 3.5), (200, 2.5), (400, 2.0)]
    assert stats.speedup(baseline, candidate, 2.5) == (2.0, "=")
    # a baseline whose loss rises at the end first reaches its final loss before its last step: 1× itself
    rising = [(100, 4.0), (200, 3.0), (300, 2.8), (400, 2.9)]
    assert stats.speedup(rising, rising, rising[-1][1]) == (1.0, "=")
    # already below the target at its first validation: the candidate's tokens are an upper bound
    assert stats.speedup(baseline, [(20, 2.4), (40, 2.3)], 2.5) == (20.0, "≥")
    assert stats.speedup([(100, 2.4)], candidate, 2.5) == (0.5, "≤")
    assert stats.speedup([(100, 2.4)], [(20, 2.4)], 2.5) is None  # both only bounds: unknown
    assert stats.speedup(baseline, [(400, 3.0)], 2.5) is None
