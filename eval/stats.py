"""The statistics a benchmark result is judged by: pure functions of numbers, no I/O.

modded-nanoGPT optimization track (records/track_3_optimization/README.md, "Rules"):
    track_pass_statistic     (target − mean)·√n, which must be ≥ 0.004 (a one-sided z-test with
                             σ = 0.0013 at p < 0.001): one run needs ≤ 3.276, four a mean ≤ 3.278
    track_pairwise_statistic ((loss_B − loss_A) + (steps_B − steps_A)·0.0045/100) / √(1/n_A + 1/n_B),
                             ≥ 0.004 when attempt A is better than attempt B (100 steps are worth
                             0.0045 of val loss near the target); `track_pairwise_winner` reads it
                             both ways round
Both compare with RULE_TOLERANCE, so that a statistic exactly on 0.004 passes whatever the rounding.
The main (wall-clock) track asks instead for p < 0.01 in a one-sided t-test of the seeds' losses
against the target: `one_sided_t_test`.

For any comparison: `mean_ci` (mean ± 95% CI over seeds, Student t), `welch_t_test` (two groups),
`pooled_std` (the seed-to-seed σ two groups measure), and `first_arrival` / `speedup` (read from
validation curves). The t distribution and the tests are scipy.stats'.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from scipy import stats as scipy_stats

TRACK_TARGET = 3.28
TRACK_MARGIN = 0.004
TRACK_SEED_SIGMA = 0.0013  # the seed-to-seed σ the margin assumes (0.004 = 3.09σ: p < 0.001 one-sided)
LOSS_PER_100_STEPS = 0.0045
# Rounding moves a statistic by ~1e-15 ((3.28 − 3.278)·2 = 0.0039999999999996); a val loss is
# measured in float32 (~1e-7). A statistic within 1e-9 below the margin is on it, and passes.
RULE_TOLERANCE = 1e-9


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with n − 1; None for fewer than two values (it is undefined)."""
    if len(values) < 2:
        return None
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))


def pooled_std(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The within-group σ of two groups pooled (each group's squared deviations from its own
    mean over n_A + n_B − 2); None when that is below one degree of freedom."""
    dof = len(a) + len(b) - 2
    if dof < 1 or not a or not b:
        return None
    squares = math.fsum((v - mean(group)) ** 2 for group in (a, b) for v in group)
    return math.sqrt(squares / dof)


# --- the optimization track's rules -------------------------------------------------------


def meets_margin(statistic: float, margin: float = TRACK_MARGIN) -> bool:
    return statistic >= margin - RULE_TOLERANCE


def track_pass_statistic(losses: Sequence[float], target: float = TRACK_TARGET) -> float:
    """(target − mean loss)·√n over n non-cherry-picked runs (−inf when a loss is: a failed run)."""
    return (target - mean(losses)) * math.sqrt(len(losses))


def track_passes(losses: Sequence[float], target: float = TRACK_TARGET, margin: float = TRACK_MARGIN) -> bool:
    return meets_margin(track_pass_statistic(losses, target), margin)


def track_pairwise_statistic(
    losses_a: Sequence[float],
    steps_a: int,
    losses_b: Sequence[float],
    steps_b: int,
    loss_per_100_steps: float = LOSS_PER_100_STEPS,
) -> float:
    """The track's evidence that attempt A is better than attempt B (≥ 0.004: significant):
    B's extra loss plus the loss B's extra steps are worth, over √(1/n_A + 1/n_B). Swapping A
    and B negates it."""
    loss_diff = mean(losses_b) - mean(losses_a)
    step_diff = (steps_b - steps_a) / 100 * loss_per_100_steps
    return (loss_diff + step_diff) / math.sqrt(1 / len(losses_a) + 1 / len(losses_b))


def track_pairwise_winner(statistic: float, margin: float = TRACK_MARGIN) -> str | None:
    """ "A" or "B", whichever the pairwise statistic (A against B) shows significantly better; None
    when it shows neither."""
    if meets_margin(statistic, margin):
        return "A"
    if meets_margin(-statistic, margin):
        return "B"
    return None


# --- Student's t ----------------------------------------------------------------------------


def t_test_obstacle(*groups: Sequence[float]) -> str | None:
    """Why a t-test over these groups cannot be run (a group of one, or no spread at all), or None."""
    small = [len(group) for group in groups if len(group) < 2]
    if small:
        return f"a t-test needs two seeds or more in a group ({min(small)} here)"
    if all(min(group) == max(group) for group in groups):
        return "the seeds' losses are identical within each group: no spread to test against"
    return None


def one_sided_t_test(losses: Sequence[float], target: float = TRACK_TARGET) -> tuple[float, float]:
    """(t, p) of the one-sided test that the seeds' mean loss is below `target` (the main
    track's rule: p < 0.01). ValueError, saying why, when it cannot be run (t_test_obstacle)."""
    obstacle = t_test_obstacle(losses)
    if obstacle:
        raise ValueError(obstacle)
    result = scipy_stats.ttest_1samp(losses, target, alternative="less")
    return float(result.statistic), float(result.pvalue)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of its two-sided Student-t confidence interval); None for one value."""
    std = sample_std(values)
    if std is None:
        return mean(values), None
    quantile = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
    return mean(values), float(quantile) * std / math.sqrt(len(values))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(t, two-sided p) of Welch's test that groups a and b have the same mean. ValueError,
    saying why, when it cannot be run (t_test_obstacle)."""
    obstacle = t_test_obstacle(a, b)
    if obstacle:
        raise ValueError(obstacle)
    with warnings.catch_warnings():
        # scipy warns of "catastrophic cancellation" when one group's values are all equal; its
        # variance is then exactly 0 and the test exact (both groups equal is refused above)
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = scipy_stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


# --- reading curves -------------------------------------------------------------------------


def first_arrival(curve: Sequence[tuple[float, float]], target: float) -> tuple[float, bool] | None:
    """Where a validation curve [(x, loss), ...] first reaches `target` (x: tokens or steps),
    interpolated linearly from the validation before it, and whether that x is only an upper
    bound: the point before is missing (the first validation reaches it) or not finite. A
    non-finite loss has not reached the target. None when the curve never reaches it."""
    previous = None
    for x, loss in curve:
        if loss <= target:  # False for NaN
            if previous is None or not math.isfinite(previous[1]):
                return x, True
            (x0, l0) = previous
            return (x if l0 == loss else x0 + (l0 - target) / (l0 - loss) * (x - x0)), False
        previous = (x, loss)
    return None


def speedup(
    baseline: Sequence[tuple[float, float]],
    candidate: Sequence[tuple[float, float]],
    target: float,
) -> tuple[float, str] | None:
    """How many times fewer tokens the candidate needs than the baseline to first reach `target`
    (each read from its own curve by first_arrival), and how that ratio relates to the truth:
    "=", "≥" (the candidate's arrival is an upper bound) or "≤" (the baseline's is). None when
    either never reaches it, or both arrivals are upper bounds (the ratio is then unknown)."""
    base, cand = first_arrival(baseline, target), first_arrival(candidate, target)
    if base is None or cand is None or (base[1] and cand[1]) or cand[0] <= 0:
        return None
    relation = "≥" if cand[1] else "≤" if base[1] else "="
    return base[0] / cand[0], relation
