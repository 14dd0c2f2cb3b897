"""Comparing groups of runs: a table, what it found and how sure, and a pairwise test.

Each group is the runs of one optimizer and setting, seeds pooled (eval/runs.py). Every number
says which statistic it is and over how many seeds. The rule for runs that did not finish is
eval/runs.py's, as in records: a failed run (diverged, or a non-finite loss) and an unfinished one
are listed with what happened to them; a group's statistics pool its finished seeds and say
"n of N" when that is not all of them; only groups whose every seed finished are ranked; in the
track's pairwise rule a failed seed counts as a loss above any other, and an unfinished one leaves
the verdict INCOMPLETE.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eval import stats
from eval.runs import FAILED, FINISHED, UNFINISHED, Run, not_finished, with_outcome
from train.metric_names import (
    DEAD,
    DEAD_BLOCK,
    LEVERAGE_CV_UP,
    NEARLY_DEAD,
    OPTIM_STEP_MS,
    STARVED_UP,
    STARVED_UP_BLOCK,
    TOKENS,
    TOKENS_PER_S,
    VAL_LOSS,
)

PROBLEMS_HEADING = (
    "Problem runs: failed, unfinished or lacking metrics (never ranked; a statistic without them says n of N)"
)
UNDEFINED = "–"  # a statistic that does not exist for these values (the std of one, a t-test without spread)
# The pairwise rule's margin assumes the track's seed σ; measured σ this many times larger makes it too lenient.
SIGMA_MISFIT_RATIO = 2.0
STEP_COST_REFERENCE = "adamw"  # the optimizer whose step the others' are a multiple of, when one group has it


@dataclass
class Group:
    label: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return with_outcome(self.runs, FINISHED)

    @property
    def final_losses(self) -> list[float]:
        return [run.final_val_loss for run in self.finished]

    @property
    def all_finished(self) -> bool:
        return len(self.finished) == len(self.runs)

    @property
    def seeds(self) -> str:
        """How many seeds its statistics pool: "n", or "n of N" when some did not finish."""
        return f"{len(self.finished)}" if self.all_finished else f"{len(self.finished)} of {len(self.runs)}"

    def mean_curve(self, x: str = TOKENS) -> list[tuple[float, float]]:
        """The val-loss curve averaged over the finished seeds, at the points all of them logged."""
        series = [dict(run.series(VAL_LOSS, x)) for run in self.finished]
        if not series:
            return []
        common = sorted(set.intersection(*(set(s) for s in series)))
        return [(point, sum(s[point] for s in series) / len(series)) for point in common]

    def end_values(self, key: str) -> list[float]:
        return [value for value in (run.last(key) for run in self.finished) if value is not None]

    @property
    def optim_step_ms(self) -> float | None:
        """The median over its runs of each run's median optimizer step."""
        return _median([run.median(OPTIM_STEP_MS) for run in self.runs])


def worst_blocks(runs: Sequence[Run], pattern: re.Pattern) -> list[float]:
    """Each run's worst block at its last diagnostic: the largest value of a per-block fraction."""
    return [value for value in (run.over_blocks(pattern, max) for run in runs) if value is not None]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def shared_value(values: Iterable[Any]) -> str:
    """The one value of `values`, or the set of them "{a, b}", numbers in numeric order (floats in %g)."""
    found = sorted(set(values), key=lambda v: (not is_number(v), v if is_number(v) else 0, str(v)))
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in found]
    return shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}"


def spread(values: Sequence[float], digits: int) -> str:
    """ "mean (min–max)"; the mean alone for one value or identical values; "-" for none."""
    if not values:
        return "-"
    mean, low, high = (f"{v:.{digits}f}" for v in (sum(values) / len(values), min(values), max(values)))
    return mean if low == high else f"{mean} ({low}–{high})"


def percent_spread(values: Sequence[float]) -> str:
    """ "mean% (min–max)" of fractions."""
    text = spread([100 * v for v in values], 1)
    return text if text == "-" else text.replace(" (", "% (", 1) if "(" in text else text + "%"


def value_range(values: Sequence[float], digits: int) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}" if len(values) > 1 else UNDEFINED


def loss_with_ci(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, half = stats.mean_ci(values)
    return f"{mean:.4f} ± {UNDEFINED if half is None else f'{half:.4f}'}"


def groups_of(grouped: Mapping[str, Sequence[Run]]) -> list[Group]:
    return [Group(label, list(runs)) for label, runs in grouped.items()]


def _median(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def arrival_text(arrival: tuple[float, bool] | None) -> str:
    """Tokens to a loss: "not reached", or "≤ x" when x is an upper bound (stats.first_arrival)."""
    if arrival is None:
        return "not reached"
    return f"{'≤ ' if arrival[1] else ''}{arrival[0]:,.0f}"


def comparison_table(groups: Sequence[Group], baseline: str | None = None, target: float | None = None) -> str:
    """Markdown: one row per group. Loss columns pool the finished seeds (the final val loss, and a
    line below the table, say "n of N" when that is not all); columns that no run has
    (diagnostics, HellaSwag, a baseline) are left out."""
    any_diag = any(run.series(DEAD) or run.series(STARVED_UP) for group in groups for run in group.runs)
    any_hellaswag = any(run.hellaswag() for group in groups for run in group.runs)
    base = next((g for g in groups if g.label == baseline), None)
    header = [
        "group",
        "seeds (finished/all)",
        "final val loss (mean ± 95% CI)",
        "range",
        "best val loss",
        "steps",
        "tokens",
    ]
    if target is not None:
        header.append(f"tokens to {target}")
    base_curve = base.mean_curve() if base is not None else []
    if base is not None:
        header += [f"tokens to {base.label}'s final loss", f"speedup vs {base.label} (tokens to its final loss)"]
    header += ["tokens/s", "optimizer step (ms)"]
    references = [g for g in groups if g.runs[0].optimizer == STEP_COST_REFERENCE and g.optim_step_ms]
    reference = references[0] if len(references) == 1 else None
    if reference is not None:
        header.append(f"optimizer step / {reference.label}'s")
    if any_diag:
        header += [
            "exactly dead",
            "exactly dead, worst block",
            "nearly dead",
            "starved up rows",
            "starved up rows, worst block",
            "up leverage CV",
        ]
    if any_hellaswag:
        header += ["HellaSwag acc_norm llmc", "HellaSwag acc_norm lm_eval"]
    rows = []
    for group in groups:
        losses = group.final_losses
        finished = group.finished
        row = [
            group.label,
            f"{len(finished)}/{len(group.runs)}",
            loss_with_ci(losses) + ("" if group.all_finished or not losses else f" ({group.seeds})"),
            value_range(losses, 4) if losses else "-",
            spread([r.best_val_loss for r in finished], 4),
            str(finished[0].steps) if finished else "-",
            f"{finished[0].records[-1][TOKENS]:,}" if finished else "-",
        ]
        curve = group.mean_curve()
        if target is not None:
            row.append(arrival_text(stats.first_arrival(curve, target)) if curve else "-")
        if base is not None:
            base_loss = base_curve[-1][1] if base_curve else None
            ratio = stats.speedup(base_curve, curve, base_loss) if base_curve and curve else None
            row += [
                arrival_text(stats.first_arrival(curve, base_loss)) if base_curve and curve else "-",
                "-" if ratio is None else f"{'' if ratio[1] == '=' else ratio[1] + ' '}{ratio[0]:.2f}×",
            ]
        row += [
            _format(_median([r.median(TOKENS_PER_S) for r in group.runs]), ",.0f"),
            _format(group.optim_step_ms, ".1f"),
        ]
        if reference is not None:
            step_ms = group.optim_step_ms
            row.append("-" if step_ms is None else f"{step_ms / reference.optim_step_ms:.1f}×")
        if any_diag:
            row += [
                percent_spread(group.end_values(DEAD)),
                percent_spread(worst_blocks(group.finished, DEAD_BLOCK)),
                percent_spread(group.end_values(NEARLY_DEAD)),
                percent_spread(group.end_values(STARVED_UP)),
                percent_spread(worst_blocks(group.finished, STARVED_UP_BLOCK)),
                spread(group.end_values(LEVERAGE_CV_UP), 3),
            ]
        if any_hellaswag:
            scores = [r.hellaswag() for r in finished if r.hellaswag()]
            row += [spread([s[c] for s in scores], 4) for c in ("llmc", "lm_eval")]
        rows.append(row)
    table = markdown_table(header, rows)
    partial = [f"{group.label} over {group.seeds}" for group in groups if group.final_losses and not group.all_finished]
    if partial:
        pooled = "; ".join(partial)
        table += f"\n\nEvery column but tokens/s and the optimizer step's pools the finished seeds only: {pooled}."
    return table


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def problems(groups: Sequence[Group]) -> list[str]:
    """A line for every run that failed, did not finish or lacks something, saying what: none is
    dropped silently."""
    return [f"{run.path}: {'; '.join(run.problems)}" for group in groups for run in group.runs if run.problems]


def welch_text(la: Sequence[float], lb: Sequence[float]) -> str:
    """ "Welch t = …, two-sided p = …", or why the test was not run."""
    try:
        t, p = stats.welch_t_test(la, lb)
    except ValueError as reason:
        return f"no Welch t-test: {reason}"
    return f"Welch t = {t:.2f}, two-sided p = {p:.3g}"


def difference(a: Group, b: Group) -> str:
    """How A's final val loss compares with B's over their finished seeds, and how sure: whether
    the seeds of one all lie below those of the other, and Welch's t-test."""
    la, lb = a.final_losses, b.final_losses
    if not la or not lb:
        return f"{a.label} vs {b.label}: not comparable (a group has no finished seed)"
    separate = max(la) < min(lb) or max(lb) < min(la)
    if a.all_finished and b.all_finished:
        separation = "every seed of one is below every seed of the other" if separate else "their seed ranges overlap"
    elif separate:
        separation = "the finished seeds of one are all below those of the other"
    else:
        separation = "their finished seeds overlap"
    delta = stats.mean(la) - stats.mean(lb)
    return f"{a.label} − {b.label} = {delta:+.4f} ({a.seeds} vs {b.seeds} seeds; {separation}; {welch_text(la, lb)})"


def findings(groups: Sequence[Group]) -> list[str]:
    """What the groups show, in sentences: the ranking by final val loss of the groups whose every
    seed finished, with each gap and how sure it is, the groups left unranked and why, then the
    neuron deaths and starvation where they were measured."""
    ranked = sorted((g for g in groups if g.final_losses and g.all_finished), key=lambda g: stats.mean(g.final_losses))
    unranked = [g for g in groups if g not in ranked]
    lines = []
    if ranked:
        best = ranked[0]
        among = "" if not unranked else f" among the {len(ranked)} of {len(groups)} groups whose every seed finished"
        lines.append(
            f"Lowest final val loss{among}: {best.label}, {loss_with_ci(best.final_losses)} "
            f"(mean ± 95% CI over {best.seeds} seed{'s' if len(best.runs) > 1 else ''})."
            + (" Against each other group:" if len(ranked) > 1 else "")
        )
        lines += [f"  - {difference(best, other)}" for other in ranked[1:]]
        fewest = min(len(g.final_losses) for g in ranked)
        if len(ranked) > 1 and fewest < 5:
            lines.append(
                f"  - How sure: with {fewest} seed(s) in a group, read a gap as real only when every seed of one group "
                "beats every seed of the other and Welch's p is small; more seeds (--seeds) narrow the intervals."
            )
    if unranked:
        lines.append(
            "Not ranked, as not every seed finished (see the problem runs): "
            + "; ".join(f"{g.label} ({not_finished(g.runs)}; {g.seeds} seeds finished)" for g in unranked)
            + "."
        )
    for key, what in (
        (DEAD, "exactly dead MLP units"),
        (NEARLY_DEAD, "nearly dead MLP units"),
        (STARVED_UP, "starved up-projection rows"),
    ):
        measured = [(g.label, g.end_values(key)) for g in groups if g.end_values(key)]
        if measured:
            parts = ", ".join(f"{label} {percent_spread(values)}" for label, values in measured)
            lines.append(f"At the end, {what} (mean (min–max) over finished seeds): {parts}.")
    return lines


def findings_bullets(groups: Sequence[Group]) -> list[str]:
    """The findings as markdown bullets (their indented lines are already sub-bullets)."""
    return [line if line.startswith("  ") else f"- {line}" for line in findings(groups)]


def verdict_losses(group: Group) -> list[float]:
    """The group's losses as the track's rules count them: every finished seed's, and +inf for a
    failed one (a loss above any other)."""
    return group.final_losses + [math.inf] * len(with_outcome(group.runs, FAILED))


def pairwise_verdict(a: Group, b: Group, steps_a: int, steps_b: int) -> tuple[str, str]:
    """(the track pairwise statistic of A against B as text, the verdict naming the better group)."""
    waiting = [f"{g.label}: {not_finished(g.runs)}" for g in (a, b) if with_outcome(g.runs, UNFINISHED)]
    if waiting:
        return UNDEFINED, f"INCOMPLETE: no verdict until every seed has finished ({'; '.join(waiting)})"
    value = stats.track_pairwise_statistic(verdict_losses(a), steps_a, verdict_losses(b), steps_b)
    if math.isnan(value):
        return UNDEFINED, "neither: both have failed seeds"
    winner = stats.track_pairwise_winner(value)
    shown = f"{value:.5f}" if math.isfinite(value) else f"{value} (a failed seed counts as a loss above any other)"
    if winner is None:
        return shown, "not significant either way"
    better = a if winner == "A" else b
    return shown, f"{winner} ({better.label}) significantly better"


def pairwise(a: Group, b: Group) -> list[str]:
    """The pairwise statistics between two groups, each with the rule it applies and its inputs;
    the verdict names the better group whichever way round they come."""
    lines = [f"Pairwise, {a.label} (A) against {b.label} (B):", f"- final val loss: {difference(a, b)}"]
    la, lb = a.final_losses, b.final_losses
    if not la or not lb:
        return lines
    steps_a, steps_b = a.finished[0].steps, b.finished[0].steps
    value, verdict = pairwise_verdict(a, b, steps_a, steps_b)
    lines.append(
        f"- optimization-track pairwise rule ((loss_B − loss_A) + (steps_B − steps_A)·{stats.LOSS_PER_100_STEPS}/100)"
        f" / √(1/n_A + 1/n_B) ≥ {stats.TRACK_MARGIN} for A better, ≤ −{stats.TRACK_MARGIN} for B better: inputs mean "
        f"loss {stats.mean(la):.5f} vs {stats.mean(lb):.5f} ({a.seeds} vs {b.seeds} seeds finished), steps {steps_a} "
        f"vs {steps_b}, n {len(a.runs)} vs {len(b.runs)} → {value}: {verdict}; {welch_text(la, lb)}"
    )
    measured = stats.pooled_std(la, lb)
    fit = ""
    if measured is not None and measured >= SIGMA_MISFIT_RATIO * stats.TRACK_SEED_SIGMA:
        fit = (
            f" The measured σ is {measured / stats.TRACK_SEED_SIGMA:.1f}× the assumed one: the rule's margin does "
            "not fit this setting, so read the verdict beside Welch's p."
        )
    lines.append(
        f"- the rule's margin assumes a seed-to-seed σ of {stats.TRACK_SEED_SIGMA} (the track's); the σ measured in "
        f"these runs (pooled within the two groups) is {UNDEFINED if measured is None else f'{measured:.5f}'}.{fit} "
        f"Its {stats.LOSS_PER_100_STEPS} per 100 steps was measured at the track's scale; elsewhere read the step term "
        "as a loss difference."
    )
    return lines
