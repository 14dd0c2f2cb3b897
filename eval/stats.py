"""The statistics a benchmark result is judged by: pure functions of numbers, no I/O.

modded-nanoGPT optimization track (records/track_3_optimization/README.md, "Rules"):
    track_pass_statistic     (target − mean)·√n, which must be ≥ 0.004 (a one-sided z-test with
                             σ = 0.0013 at p < 0.001): one run needs ≤ 3.276, four a mean ≤ 3.278
    track_pairwise_statistic ((loss_B − loss_A) + (steps_B − steps_A)·0.0045/100) / √(1/n_A + 1/n_B),
                             ≥ 0.004 when attempt A is better than attempt B (100 steps are worth
                             0.0045 of val loss near the target)
The main (wall-clock) track asks instead for p < 0.01 in a one-sided t-test of the seeds' losses
against the target: `one_sided_t_test`.

For any comparison: `mean_ci` (mean ± 95% CI over seeds, Student t), `welch_t_test` (two groups),
and `tokens_to_reach` / `speedup` (read from validation curves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TRACK_TARGET = 3.28
TRACK_MARGIN = 0.004
LOSS_PER_100_STEPS = 0.0045


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with n − 1 (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --- the optimization track's rules -------------------------------------------------------


def track_pass_statistic(losses: Sequence[float], target: float = TRACK_TARGET) -> float:
    """(target − mean loss)·√n over n non-cherry-picked runs."""
    return (target - _mean(losses)) * math.sqrt(len(losses))


def track_passes(losses: Sequence[float], target: float = TRACK_TARGET, margin: float = TRACK_MARGIN) -> bool:
    return track_pass_statistic(losses, target) >= margin


def track_pairwise_statistic(
    losses_a: Sequence[float], steps_a: int, losses_b: Sequence[float], steps_b: int,
    loss_per_100_steps: float = LOSS_PER_100_STEPS,
) -> float:
    """The track's evidence that attempt A is better than attempt B (≥ 0.004: significant):
    B's extra loss plus the loss B's extra steps are worth, over √(1/n_A + 1/n_B)."""
    loss_diff = _mean(losses_b) - _mean(losses_a)
    step_diff = (steps_b - steps_a) / 100 * loss_per_100_steps
    return (loss_diff + step_diff) / math.sqrt(1 / len(losses_a) + 1 / len(losses_b))


# --- Student's t ----------------------------------------------------------------------------


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def t_cdf(t: float, dof: float) -> float:
    """P(T ≤ t) for Student's t with `dof` degrees of freedom."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    tail = 0.5 * _incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T ≤ t) = p (bisection on t_cdf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = -1e6, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return (low + high) / 2


def one_sided_t_test(losses: Sequence[float], target: float = TRACK_TARGET) -> tuple[float, float]:
    """(t, p) of the one-sided test that the seeds' mean loss is below `target` (the main
    track's rule: p < 0.01). Needs two losses that are not all equal."""
    n, std = len(losses), sample_std(losses)
    if n < 2 or std == 0:
        raise ValueError("a t-test needs at least two losses that are not all equal")
    t = (_mean(losses) - target) / (std / math.sqrt(n))
    return t, t_cdf(t, n - 1)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of its two-sided Student-t confidence interval); None for one value."""
    mean = _mean(values)
    if len(values) < 2:
        return mean, None
    quantile = t_quantile(0.5 + confidence / 2, len(values) - 1)
    return mean, quantile * sample_std(values) / math.sqrt(len(values))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(t, two-sided p) of Welch's test that groups a and b have the same mean; needs two
    values in each and some spread."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values per group")
    va, vb = sample_std(a) ** 2 / len(a), sample_std(b) ** 2 / len(b)
    if va + vb == 0:
        raise ValueError("Welch's t-test needs some spread within the groups")
    t = (_mean(a) - _mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, 2 * t_cdf(-abs(t), dof)


# --- reading curves -------------------------------------------------------------------------


def tokens_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The tokens (or steps) at which a validation curve [(x, loss), ...] first reaches
    `target`, interpolated linearly between the two validations around it; None if it never does."""
    previous = None
    for x, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return x
            (x0, l0) = previous
            return x0 + (l0 - target) / (l0 - loss) * (x - x0)
        previous = (x, loss)
    return None


def speedup(baseline: Sequence[tuple[float, float]], candidate: Sequence[tuple[float, float]]) -> float | None:
    """How many times fewer tokens the candidate needs to reach the baseline's final val loss:
    the baseline's tokens over the candidate's (read from its curve); None when it never reaches it."""
    final_x, final_loss = baseline[-1]
    reached = tokens_to_reach(candidate, final_loss)
    return None if reached is None or reached <= 0 else final_x / reached
