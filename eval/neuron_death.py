"""The neuron-death report: a markdown table and PNG plots of run directories' `diag/...` metrics.

`neuron_death_report(run_dirs, out)` writes OUTPUTS into `out`; scripts/neuron_death_report.py is
its command, and its docstring says what each file holds. The metrics are train/diagnostics.py's
(named in train/metric_names.py, defined in docs/neuron_death.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.plots import pyplot, save_figure
from eval.report import markdown_table, shared_value, spread, worst_blocks
from eval.runs import Run, label_runs, load_runs, optimizer_rank
from train.diagnostics import LEVERAGE_HIST_EDGES, LOW_LEVERAGE_THRESHOLD
from train.metric_names import (
    DEAD,
    DEAD_BLOCK,
    LEVERAGE_CV_UP,
    LEVERAGE_HIST_UP,
    MLP_UP,
    NEARLY_DEAD,
    STARVED_DOWN,
    STARVED_UP,
    STARVED_UP_BLOCK,
    TOKENS_PER_S,
    WEIGHT_ROW_NORM_REL_MIN,
    every_block,
)

TABLE_STEPS = (100, 500)
HISTOGRAM_STEP = 500
ROW_NORM_MIN_UP = every_block(MLP_UP, WEIGHT_ROW_NORM_REL_MIN)
OUTPUTS = ("neuron_death.md", "death_vs_step.png", "leverage_hist.png")
OWN_COLUMNS = ("model.mlp_expansion",)  # its own column, so never a "setting"


def variant(run: Run) -> str:
    """The settings that set this run apart from other runs of its optimizer (its label, less the optimizer)."""
    return run.label.removeprefix(run.optimizer).strip()


def plot_label(run: Run) -> str:
    return " ".join(filter(None, (run.optimizer, f"seed {run.seed}", variant(run))))


def replicate_key(run: Run) -> tuple:
    """Runs with equal keys differ only in their seed."""
    return (run.expansion, *optimizer_rank(run.optimizer), variant(run), run.steps)


def sort_key(run: Run) -> tuple:
    return (*replicate_key(run), run.seed)


def final_loss(run: Run) -> str:
    return "-" if run.final_val_loss is None else f"{run.final_val_loss:.4f}"


def cell(run: Run, key: str, step: int | None = None) -> str:
    found = run.near(key, step)
    if found is None:
        return "-"
    logged, value = found
    return f"{value:.3f}" if step is None or logged == step else f"{value:.3f} (@{logged})"


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def worst_block_cells(run: Run) -> list[str]:
    """Exactly dead and starved `up` rows in the worst block, and the smallest up row norm."""
    return [
        number(run.over_blocks(DEAD_BLOCK, max)),
        number(run.over_blocks(STARVED_UP_BLOCK, max)),
        number(run.over_blocks(ROW_NORM_MIN_UP, min)),
    ]


def identity_cells(run: Run, with_variant: bool) -> list[str]:
    return [run.optimizer, f"{run.expansion:g}"] + ([variant(run)] if with_variant else [])


def identity_header(with_variant: bool) -> list[str]:
    return ["optimizer", "MLP ×"] + (["settings"] if with_variant else [])


def run_table(runs: list[Run], with_variant: bool) -> str:
    """One row per run: its identity, the death and starvation fractions, its loss and speed."""
    at = [f"@{s}" for s in TABLE_STEPS]
    header = (
        identity_header(with_variant)
        + ["seed", "steps"]
        + [f"dead {a}" for a in at]
        + ["dead @end", "nearly dead @end"]
        + [f"starved {a}" for a in at]
        + ["starved @end", "starved down @end", "leverage CV @end"]
        + ["dead worst block @end", "starved worst block @end", "up row norm min @end", "final val loss"]
        + ["tokens/s"]
    )
    rows = []
    for run in runs:
        row = (
            identity_cells(run, with_variant)
            + [str(run.seed), str(run.steps)]
            + [cell(run, DEAD, s) for s in TABLE_STEPS]
            + [cell(run, DEAD), cell(run, NEARLY_DEAD)]
            + [cell(run, STARVED_UP, s) for s in TABLE_STEPS]
            + [cell(run, STARVED_UP), cell(run, STARVED_DOWN), cell(run, LEVERAGE_CV_UP)]
            + worst_block_cells(run)
            + [final_loss(run), f"{run.median(TOKENS_PER_S) or 0:,.0f}"]
        )
        rows.append(row)
    return markdown_table(header, rows)


def seed_table(runs: list[Run], with_variant: bool) -> str | None:
    """Mean and range over the seeds of each group of runs that differ only in their seed; None
    when no group has two seeds."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(replicate_key(run), []).append(run)
    if all(len(group) < 2 for group in groups.values()):
        return None

    def at_end(group: list[Run], key: str) -> list[float]:
        return [found[1] for found in (run.near(key, None) for run in group) if found is not None]

    header = identity_header(with_variant) + [
        "steps",
        "seeds",
        "dead @end",
        "nearly dead @end",
        "starved @end",
        "leverage CV @end",
        "dead worst block @end",
        "starved worst block @end",
        "final val loss",
    ]
    rows = []
    for group in groups.values():
        losses = [run.final_val_loss for run in group if run.final_val_loss is not None]
        rows.append(
            identity_cells(group[0], with_variant)
            + [str(group[0].steps), ", ".join(str(run.seed) for run in group)]
            + [spread(at_end(group, key), 3) for key in (DEAD, NEARLY_DEAD, STARVED_UP, LEVERAGE_CV_UP)]
            + [spread(worst_blocks(group, DEAD_BLOCK), 3), spread(worst_blocks(group, STARVED_UP_BLOCK), 3)]
            + [spread(losses, 4)]
        )
    return markdown_table(header, rows)


def settings(runs: list[Run], varied: list[str]) -> str:
    """The settings the runs share, a set of values where they differ, as markdown bullets."""

    def of(*keys: str) -> str:
        return shared_value(run.setting(*keys) for run in runs)

    lines = (
        [f"- settings that differ between runs of one optimizer (the settings column): {', '.join(varied)}"]
        if varied
        else []
    )
    return "\n".join(
        [
            f"- runs: {len(runs)}; optimizers {shared_value(r.optimizer for r in runs)}; "
            f"MLP expansion {shared_value(r.expansion for r in runs)}; seeds {of('seed')}",
            f"- model {of('model', 'name')}: d_model {of('model', 'd_model')}, {of('model', 'n_layer')} layers, "
            f"activation {of('model', 'activation')}",
            f"- {shared_value(r.steps for r in runs)} steps of {of('train', 'batch_tokens')} tokens "
            f"({of('train', 'micro_batch')} x {of('train', 'seq_len')}); data {of('data', 'name')}, "
            f"val on {of('data', 'val_tokens')} tokens",
            f"- diagnostics every {of('diagnostics', 'every')} steps on {of('diagnostics', 'probe_tokens')} probe "
            f"tokens; starvation window {of('diagnostics', 'starvation_window')} diagnostics",
            *lines,
        ]
    )


LEGEND = f"""\
- dead: units whose activation is exactly zero on every probe token, over all MLP layers
  (ReLU family only; "-" for other activations). nearly dead: mean |activation| below 1% of
  the layer's mean.
- starved: rows of the tall MLP up-projections (the neurons) whose update leverage stayed
  below {LOW_LEVERAGE_THRESHOLD}·n/m in each of the last k diagnostics; "starved down": the same
  for the down-projections' columns. leverage CV: of the up-projections' update leverage.
- worst block: the largest exactly-dead fraction of one block's units, and the largest starved
  fraction of one block's `up` rows.
- up row norm min: the smallest row norm of an up-projection weight over its matrix's mean row
  norm, the lowest over all blocks (a neuron whose row shrinks fires less: relu² scales as its square).
- A value "x (@s)" was logged at diagnostic step s, the one nearest the column's step."""


def plot_death(runs: list[Run], path: Path) -> Path:
    """Exactly-dead, nearly-dead and starved fractions against step: one row of panels per
    expansion, one line per run (a run without a metric, e.g. exact death under SwiGLU, has no line)."""
    plt = pyplot()
    expansions = sorted({run.expansion for run in runs})
    styles = run_styles(runs)
    panels = (
        (DEAD, "activation-dead fraction (all MLP units)"),
        (NEARLY_DEAD, "nearly-dead fraction (all MLP units)"),
        (STARVED_UP, "starved fraction (mlp.up rows)"),
    )
    fig, axes = plt.subplots(len(expansions), len(panels), figsize=(15, 3.2 * len(expansions)), squeeze=False)
    for row, expansion in zip(axes, expansions):
        for run in (r for r in runs if r.expansion == expansion):
            for ax, (key, _) in zip(row, panels):
                points = run.series(key)
                if points:
                    steps, fracs = zip(*points)
                    ax.plot(steps, fracs, **styles[run.path], label=plot_label(run), alpha=0.85)
        for ax, (_, title) in zip(row, panels):
            ax.set_title(f"MLP x{expansion:g}: {title}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
        # One legend per row (its panels show the same runs), beside the last panel.
        handles: dict[str, Any] = {}
        for ax in row:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        if handles:
            row[-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return save_figure(fig, path)


def plot_leverage_histograms(runs: list[Run], path: Path) -> Path:
    plt = pyplot()
    expansions = sorted({run.expansion for run in runs})
    styles = run_styles(runs)
    # The open end bins get a finite width on the log axis: [0, 1e-3) drawn from 10^-3.25, the last to 10^1.75.
    edges = [10**-3.25, *LEVERAGE_HIST_EDGES[1:-1], 10**1.75]
    fig, axes = plt.subplots(1, len(expansions), figsize=(5.5 * len(expansions), 3.6), squeeze=False)
    for ax, expansion in zip(axes[0], expansions):
        for run in (r for r in runs if r.expansion == expansion):
            found = run.near(LEVERAGE_HIST_UP, HISTOGRAM_STEP) or run.near(LEVERAGE_HIST_UP, None)
            if found is None:
                continue
            step, counts = found
            total = sum(counts)
            style = styles[run.path]
            ax.stairs(
                [c / total for c in counts],
                edges,
                color=style["color"],
                linestyle=style["linestyle"],
                label=f"{plot_label(run)} (step {step})",
            )
        ax.axvline(LOW_LEVERAGE_THRESHOLD, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("update leverage / (n/m)  (dashed: starvation threshold)")
        ax.set_ylabel("fraction of mlp.up rows")
        ax.set_title(f"MLP x{expansion:g}: leverage near step {HISTOGRAM_STEP}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


LINE_STYLES = [(line, marker) for marker in (".", "x", "^") for line in ("-", "--", ":", "-.")]


def run_styles(runs: list[Run]) -> dict[Path, dict[str, Any]]:
    """Plot style of each run (by path): a color per optimizer, and a line style and marker per
    run among those of its optimizer and expansion (one panel's lines), in table order, so that
    seeds and settings of one optimizer stay apart and seed 0 looks the same in every panel."""
    plt = pyplot()
    names = sorted({run.optimizer for run in runs}, key=optimizer_rank)
    palette = plt.get_cmap("tab10")
    styles: dict[Path, dict[str, Any]] = {}
    seen: dict[tuple[str, float], int] = {}
    for run in sorted(runs, key=sort_key):
        index = seen.get((run.optimizer, run.expansion), 0)
        seen[(run.optimizer, run.expansion)] = index + 1
        line, marker = LINE_STYLES[index % len(LINE_STYLES)]
        styles[run.path] = {"color": palette(names.index(run.optimizer) % 10), "linestyle": line, "marker": marker}
    return styles


def neuron_death_report(run_dirs: list[Path], out: Path) -> tuple[str, list[Path]]:
    """Write the report and the plots of the runs in `run_dirs` into `out`; returns the report's
    text and the files written (a plot that no run has data for is skipped). ValueError when no
    run has logged a step, before anything is written."""
    loaded = load_runs(run_dirs)
    left_out = [run for run in loaded if not run.records]
    runs = [run for run in loaded if run.records]
    if not runs:
        problems = "; ".join(f"{run.path}: {', '.join(run.problems)}" for run in loaded)
        raise ValueError(f"no run has logged a step: {problems}")
    varied = label_runs(runs, OWN_COLUMNS)
    with_variant = bool(varied)
    runs.sort(key=sort_key)

    out.mkdir(parents=True, exist_ok=True)
    report = f"# Neuron death\n\n{settings(runs, varied)}\n\n{run_table(runs, with_variant)}\n\n{LEGEND}\n"
    incomplete = [run for run in loaded if run.problems]
    if incomplete:
        report += "\nRuns with missing or partial metrics"
        report += " (left out of the tables when they logged nothing)" if left_out else ""
        report += ":\n" + "".join(f"- {run.path}: {'; '.join(run.problems)}\n" for run in incomplete)
    over_seeds = seed_table(runs, with_variant)
    if over_seeds:
        report += f"\nOver seeds: mean (min–max) of the values at the end of each run.\n\n{over_seeds}\n"
    table, deaths, histograms = (out / name for name in OUTPUTS)
    table.write_text(report)
    outputs = [table]
    if any(run.series(DEAD) or run.series(NEARLY_DEAD) for run in runs):
        outputs.append(plot_death(runs, deaths))
    if any(run.series(LEVERAGE_HIST_UP) for run in runs):
        outputs.append(plot_leverage_histograms(runs, histograms))
    return report, outputs
