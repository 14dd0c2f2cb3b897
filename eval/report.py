"""Comparing groups of runs: a table, what it found and how sure, and a pairwise test.

Each group is the runs of one optimizer and setting, seeds pooled (eval/runs.py). Every number
says which statistic it is and over how many seeds; a run with missing or partial metrics is
listed with what it lacks, and its numbers are left out of its group's statistics.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eval import stats
from eval.runs import Run

DEAD = "diag/mlp.hidden/act_dead_frac"
NEARLY_DEAD = "diag/mlp.hidden/act_nearly_dead_frac"
STARVED_UP = "diag/mlp.up/starved_frac"
LEVERAGE_CV_UP = "diag/mlp.up/leverage_cv"


@dataclass
class Group:
    label: str
    runs: list[Run]

    @property
    def complete(self) -> list[Run]:
        return [run for run in self.runs if run.final_val_loss is not None]

    @property
    def final_losses(self) -> list[float]:
        return [run.final_val_loss for run in self.complete]

    def mean_curve(self, x: str = "tokens") -> list[tuple[float, float]]:
        """The val-loss curve averaged over the complete seeds, at the points all of them logged."""
        series = [dict(run.series("val_loss", x)) for run in self.complete]
        if not series:
            return []
        common = sorted(set.intersection(*(set(s) for s in series)))
        return [(point, sum(s[point] for s in series) / len(series)) for point in common]

    def end_values(self, key: str) -> list[float]:
        return [value for value in (run.last(key) for run in self.complete) if value is not None]


def spread(values: Sequence[float], digits: int) -> str:
    """"mean (min–max)"; the mean alone for one value or identical values; "-" for none."""
    if not values:
        return "-"
    mean, low, high = (f"{v:.{digits}f}" for v in (sum(values) / len(values), min(values), max(values)))
    return mean if low == high else f"{mean} ({low}–{high})"


def percent_spread(values: Sequence[float]) -> str:
    """"mean% (min–max)" of fractions."""
    text = spread([100 * v for v in values], 1)
    return text if text == "-" else text.replace(" (", "% (", 1) if "(" in text else text + "%"


def value_range(values: Sequence[float], digits: int) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}" if len(values) > 1 else "-"


def loss_with_ci(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, half = stats.mean_ci(values)
    return f"{mean:.4f}" if half is None else f"{mean:.4f} ± {half:.4f}"


def groups_of(grouped: Mapping[str, Sequence[Run]]) -> list[Group]:
    return [Group(label, list(runs)) for label, runs in grouped.items()]


def _median(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def comparison_table(groups: Sequence[Group], baseline: str | None = None, target: float | None = None) -> str:
    """Markdown: one row per group. Loss columns pool the complete seeds; columns that no run has
    (diagnostics, HellaSwag, a baseline) are left out."""
    any_diag = any(run.series(DEAD) or run.series(STARVED_UP) for group in groups for run in group.runs)
    any_hellaswag = any(run.hellaswag() for group in groups for run in group.runs)
    base = next((g for g in groups if g.label == baseline), None)
    header = ["group", "seeds (complete/all)", "final val loss (mean ± 95% CI)", "range", "best val loss", "steps", "tokens"]
    if target is not None:
        header.append(f"tokens to {target}")
    if base is not None:
        header += [f"tokens to {base.label}'s final loss", f"speedup vs {base.label}"]
    header += ["tokens/s", "optimizer step (ms)"]
    if any_diag:
        header += ["exactly dead", "nearly dead", "starved up rows", "up leverage CV"]
    if any_hellaswag:
        header += ["HellaSwag acc_norm llmc", "HellaSwag acc_norm lm_eval"]
    rows = []
    for group in groups:
        losses = group.final_losses
        complete = group.complete
        row = [
            group.label,
            f"{len(complete)}/{len(group.runs)}",
            loss_with_ci(losses),
            value_range(losses, 4),
            spread([r.best_val_loss for r in complete], 4),
            str(complete[0].steps) if complete else "-",
            f"{complete[0].records[-1]['tokens']:,}" if complete else "-",
        ]
        curve = group.mean_curve()
        if target is not None:
            reached = stats.tokens_to_reach(curve, target)
            row.append("not reached" if reached is None else f"{reached:,.0f}")
        if base is not None:
            base_curve = base.mean_curve()
            reached = stats.tokens_to_reach(curve, base_curve[-1][1]) if base_curve else None
            ratio = stats.speedup(base_curve, curve) if base_curve and curve else None
            row += ["not reached" if reached is None else f"{reached:,.0f}", "-" if ratio is None else f"{ratio:.2f}×"]
        row += [
            _format(_median([r.median("tokens_per_s") for r in group.runs]), ",.0f"),
            _format(_median([r.median("optim_step_ms") for r in group.runs]), ".1f"),
        ]
        if any_diag:
            row += [percent_spread(group.end_values(k)) for k in (DEAD, NEARLY_DEAD, STARVED_UP)]
            row.append(spread(group.end_values(LEVERAGE_CV_UP), 3))
        if any_hellaswag:
            scores = [r.hellaswag() for r in complete if r.hellaswag()]
            row += [spread([s[c] for s in scores], 4) for c in ("llmc", "lm_eval")]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def problems(groups: Sequence[Group]) -> list[str]:
    """A line for every run that lacks something, saying what: none is dropped silently."""
    return [f"{run.path}: {'; '.join(run.problems)}" for group in groups for run in group.runs if run.problems]


def difference(a: Group, b: Group) -> str:
    """How A's final val loss compares with B's, and how sure: whether every seed of one beats
    every seed of the other, and Welch's t-test where both have two seeds or more."""
    la, lb = a.final_losses, b.final_losses
    if not la or not lb:
        return f"{a.label} vs {b.label}: not comparable (a group has no complete run)"
    delta = sum(la) / len(la) - sum(lb) / len(lb)
    if max(la) < min(lb) or max(lb) < min(la):
        separation = "every seed of one is below every seed of the other"
    else:
        separation = "their seed ranges overlap"
    text = f"{a.label} − {b.label} = {delta:+.4f} ({len(la)} vs {len(lb)} seeds; {separation}"
    try:
        t, p = stats.welch_t_test(la, lb)
        text += f"; Welch t = {t:.2f}, two-sided p = {p:.3g})"
    except ValueError:
        text += "; too few seeds for a t-test)"
    return text


def findings(groups: Sequence[Group]) -> list[str]:
    """What the groups show, in sentences: the ranking by final val loss with each gap and how
    sure it is, then the neuron deaths and starvation where they were measured."""
    ranked = sorted((g for g in groups if g.final_losses), key=lambda g: sum(g.final_losses) / len(g.final_losses))
    lines = []
    if ranked:
        best = ranked[0]
        seeds = len(best.final_losses)
        lines.append(
            f"Lowest final val loss: {best.label}, {loss_with_ci(best.final_losses)} "
            f"(mean ± 95% CI over {seeds} seed{'s' if seeds > 1 else ''}). Against each other group:"
        )
        lines += [f"  - {difference(best, other)}" for other in ranked[1:]]
        fewest = min(len(g.final_losses) for g in ranked)
        if fewest < 5:
            lines.append(
                f"  - How sure: with {fewest} seed(s) in a group, read a gap as real only when every seed of one group "
                "beats every seed of the other and Welch's p is small; more seeds (--seeds) narrow the intervals."
            )
    for key, what in ((DEAD, "exactly dead MLP units"), (NEARLY_DEAD, "nearly dead MLP units"), (STARVED_UP, "starved up-projection rows")):
        measured = [(g.label, g.end_values(key)) for g in groups if g.end_values(key)]
        if measured:
            parts = ", ".join(f"{label} {percent_spread(values)}" for label, values in measured)
            lines.append(f"At the end, {what} (mean (min–max) over seeds): {parts}.")
    return lines


def pairwise(a: Group, b: Group) -> list[str]:
    """The pairwise statistics between two groups, each with the rule it applies and its inputs."""
    lines = [f"Pairwise, {a.label} (A) against {b.label} (B):", f"- final val loss: {difference(a, b)}"]
    la, lb = a.final_losses, b.final_losses
    if la and lb:
        steps_a, steps_b = a.complete[0].steps, b.complete[0].steps
        value = stats.track_pairwise_statistic(la, steps_a, lb, steps_b)
        verdict = "A significantly better" if value >= stats.TRACK_MARGIN else "not significant"
        lines.append(
            f"- optimization-track pairwise rule ((loss_B − loss_A) + (steps_B − steps_A)·{stats.LOSS_PER_100_STEPS}/100)"
            f" / √(1/n_A + 1/n_B) ≥ {stats.TRACK_MARGIN}: inputs mean loss {sum(la) / len(la):.5f} vs {sum(lb) / len(lb):.5f}, "
            f"steps {steps_a} vs {steps_b}, n {len(la)} vs {len(lb)} → {value:.5f}: {verdict} "
            "(the rule's 0.0045 per 100 steps was measured at the track's scale; elsewhere read it as a loss difference)"
        )
    return lines

