"""Turn neuron-death run directories into a markdown table and PNG plots.

    python scripts/neuron_death_report.py runs/neuron_death/* --out docs/neuron_death

Reads each run's config.yaml and metrics.jsonl (the `diag/...` metrics of train/diagnostics.py,
defined in docs/neuron_death.md) and writes into --out:
    neuron_death.md       the settings, then one row per run: activation-dead and starved fractions
                          at steps 100 and 500 and at the end, leverage CV, the smallest up-projection
                          row norm, final val loss, tokens/s;
                          where runs differ only in their seed, a second table of the mean and range
                          over those seeds
    death_vs_step.png     exactly-dead, nearly-dead and starved fractions against step, one
                          panel row per MLP expansion
    leverage_hist.png     the mlp.up leverage histograms at step 500 (or the nearest histogram step)
A value at step s is the one logged at the diagnostic step nearest s, marked "(@step)" when that
is not s itself; "-" means not logged (or the run ended before s). Settings that differ between
runs of the same optimizer (an lr, a schedule; not the seed or the MLP expansion, which have their
own columns) get a "settings" column, so that every row says what was run.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from eval.plots import pyplot, save_figure
from eval.runs import Run, label_runs, load_runs, optimizer_rank
from train.cli import exit_code
from train.diagnostics import LEVERAGE_HIST_EDGES, LOW_LEVERAGE_THRESHOLD

TABLE_STEPS = (100, 500)
HISTOGRAM_STEP = 500
DEAD = "diag/mlp.hidden/act_dead_frac"
NEARLY_DEAD = "diag/mlp.hidden/act_nearly_dead_frac"
STARVED_UP = "diag/mlp.up/starved_frac"
STARVED_DOWN = "diag/mlp.down/starved_frac"
LEVERAGE_CV_UP = "diag/mlp.up/leverage_cv"
LEVERAGE_HIST_UP = "diag/mlp.up/leverage_hist"
ROW_NORM_MIN_UP = re.compile(r"diag/blocks\.\d+\.mlp\.up/weight_row_norm_rel_min")
DEAD_BLOCK = re.compile(r"diag/blocks\.\d+\.mlp\.hidden/act_dead_frac")
STARVED_UP_BLOCK = re.compile(r"diag/blocks\.\d+\.mlp\.up/starved_frac")
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


def over_blocks(run: Run, pattern: re.Pattern, reduce) -> float | None:
    """`reduce` (min or max) over the blocks of a per-block metric, at the last diagnostic that
    logged it: the worst block, where a pooled fraction can hide one block's collapse."""
    for record in reversed(run.records):
        found = [value for key, value in record.items() if pattern.fullmatch(key)]
        if found:
            return reduce(found)
    return None


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def worst_block_cells(run: Run) -> list[str]:
    """Exactly dead and starved `up` rows in the worst block, and the smallest up row norm."""
    return [
        number(over_blocks(run, DEAD_BLOCK, max)),
        number(over_blocks(run, STARVED_UP_BLOCK, max)),
        number(over_blocks(run, ROW_NORM_MIN_UP, min)),
    ]


def markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def identity_cells(run: Run, with_variant: bool) -> list[str]:
    return [run.optimizer, f"{run.expansion:g}"] + ([variant(run)] if with_variant else [])


def identity_header(with_variant: bool) -> list[str]:
    return ["optimizer", "MLP ×"] + (["settings"] if with_variant else [])


def markdown_table(runs: list[Run], with_variant: bool) -> str:
    at = [f"@{s}" for s in TABLE_STEPS]
    header = (
        identity_header(with_variant)
        + ["seed", "steps"]
        + [f"dead {a}" for a in at]
        + ["dead @end", "nearly dead @end"]
        + [f"starved {a}" for a in at]
        + ["starved @end", "starved down @end", "leverage CV @end"]
        + ["dead worst block @end", "starved worst block @end", "up row norm min @end", "final val loss", "tokens/s"]
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
            + [final_loss(run), f"{run.median('tokens_per_s') or 0:,.0f}"]
        )
        rows.append(row)
    return markdown_rows(header, rows)


def spread(found: list[float], digits: int) -> str:
    """"mean (min–max)" of the values; the mean alone when they agree to `digits`; "-" for none."""
    if not found:
        return "-"
    mean, low, high = (f"{value:.{digits}f}" for value in (sum(found) / len(found), min(found), max(found)))
    return mean if low == high else f"{mean} ({low}–{high})"


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

    def worst(group: list[Run], pattern: re.Pattern) -> list[float]:
        return [value for value in (over_blocks(run, pattern, max) for run in group) if value is not None]

    header = identity_header(with_variant) + [
        "steps", "seeds", "dead @end", "nearly dead @end", "starved @end", "leverage CV @end",
        "dead worst block @end", "starved worst block @end", "final val loss",
    ]
    rows = []
    for group in groups.values():
        losses = [run.final_val_loss for run in group if run.final_val_loss is not None]
        rows.append(
            identity_cells(group[0], with_variant)
            + [str(group[0].steps), ", ".join(str(run.seed) for run in group)]
            + [spread(at_end(group, key), 3) for key in (DEAD, NEARLY_DEAD, STARVED_UP, LEVERAGE_CV_UP)]
            + [spread(worst(group, DEAD_BLOCK), 3), spread(worst(group, STARVED_UP_BLOCK), 3)]
            + [spread(losses, 4)]
        )
    return markdown_rows(header, rows)


def setting(*keys: str):
    """A getter of run.config[keys[0]][keys[1]]...; "-" where the config has no such key."""

    def get(run: Run) -> Any:
        value = run.config
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return "-"
            value = value[key]
        return value

    return get


def values(runs: list[Run], get) -> str:
    """The one value of `get(run)` over all runs, or the set of them, numbers in numeric order."""
    found = sorted({get(run) for run in runs}, key=lambda v: (isinstance(v, str), 0 if isinstance(v, str) else v, str(v)))
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in found]
    return shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}"


def settings(runs: list[Run], varied: list[str]) -> str:
    def of(*keys: str) -> str:
        return values(runs, setting(*keys))

    lines = (
        [f"- settings that differ between runs of one optimizer (the settings column): {', '.join(varied)}"]
        if varied
        else []
    )
    return "\n".join(
        [
            f"- runs: {len(runs)}; optimizers {values(runs, lambda r: r.optimizer)}; "
            f"MLP expansion {values(runs, lambda r: r.expansion)}; seeds {of('seed')}",
            f"- model {of('model', 'name')}: d_model {of('model', 'd_model')}, {of('model', 'n_layer')} layers, "
            f"activation {of('model', 'activation')}",
            f"- {values(runs, lambda r: r.steps)} steps of {of('train', 'batch_tokens')} tokens "
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


def plot_death(runs: list[Run], path: Path) -> None:
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
    save_figure(fig, path)


def plot_leverage_histograms(runs: list[Run], path: Path) -> None:
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
            ax.stairs([c / total for c in counts], edges, color=style["color"], linestyle=style["linestyle"],
                      label=f"{plot_label(run)} (step {step})")
        ax.axvline(LOW_LEVERAGE_THRESHOLD, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("update leverage / (n/m)  (dashed: starvation threshold)")
        ax.set_ylabel("fraction of mlp.up rows")
        ax.set_title(f"MLP x{expansion:g}: leverage near step {HISTOGRAM_STEP}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    save_figure(fig, path)


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (config.yaml + metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="where the table and plots go")
    args = parser.parse_args(argv)
    loaded = load_runs(args.run_dirs)
    left_out = [run for run in loaded if not run.records]
    runs = [run for run in loaded if run.records]
    if not runs:
        raise ValueError("no run has logged a step: " + "; ".join(f"{run.path}: {', '.join(run.problems)}" for run in loaded))
    varied = label_runs(runs, OWN_COLUMNS)
    with_variant = bool(varied)
    runs.sort(key=sort_key)

    args.out.mkdir(parents=True, exist_ok=True)
    report = f"# Neuron death\n\n{settings(runs, varied)}\n\n{markdown_table(runs, with_variant)}\n\n{LEGEND}\n"
    incomplete = [run for run in loaded if run.problems]
    if incomplete:
        report += "\nRuns with missing or partial metrics" + (" (left out of the tables when they logged nothing)" if left_out else "")
        report += ":\n" + "".join(f"- {run.path}: {'; '.join(run.problems)}\n" for run in incomplete)
    over_seeds = seed_table(runs, with_variant)
    if over_seeds:
        report += f"\nOver seeds: mean (min–max) of the values at the end of each run.\n\n{over_seeds}\n"
    (args.out / "neuron_death.md").write_text(report)
    outputs = [args.out / "neuron_death.md"]
    if any(run.series(DEAD) or run.series(NEARLY_DEAD) for run in runs):
        plot_death(runs, args.out / "death_vs_step.png")
        outputs.append(args.out / "death_vs_step.png")
    if any(run.series(LEVERAGE_HIST_UP) for run in runs):
        plot_leverage_histograms(runs, args.out / "leverage_hist.png")
        outputs.append(args.out / "leverage_hist.png")
    print(report)
    if len(outputs) < 3:
        print("note: some runs logged no diagnostics (diagnostics.every: 0?), so some plots were skipped")
    print("outputs:\n" + "\n".join(f"  {path}" for path in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
