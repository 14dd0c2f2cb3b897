"""Figures of runs: curves with a band over seeds, one color per group. matplotlib is imported
only here, and only when a figure is drawn (headless: the Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from eval.runs import Run, load_run
from train.metric_names import DEAD, DIAG_PREFIX, ELAPSED_S, NEARLY_DEAD, STARVED_UP, STEP, TOKENS, VAL_LOSS

# (metric key, x axis, panel title): the panels the README's main job and reports draw.
LOSS_PANELS = (
    (VAL_LOSS, STEP, "val loss against step"),
    (VAL_LOSS, TOKENS, "val loss against tokens"),
    (VAL_LOSS, ELAPSED_S, "val loss against wall time (s)"),
)
DEATH_PANELS = (
    (DEAD, STEP, "exactly-dead fraction (all MLP units)"),
    (NEARLY_DEAD, STEP, "nearly-dead fraction (all MLP units)"),
    (STARVED_UP, STEP, "starved fraction (mlp.up rows)"),
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Grid on every axis, then write the PNG and free the figure."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def band(runs: Sequence[Run], key: str, x: str) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """(xs, mean, min, max) over the runs at the x values every run logged; None if none did."""
    series = [dict(run.series(key, x)) for run in runs]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not common:
        return None
    values = [[s[point] for s in series] for point in common]
    return common, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_groups(
    groups: Mapping[str, Sequence[Run]], panels: Sequence[tuple[str, str, str]], path: Path, columns: int = 3
) -> Path | None:
    """One panel per (key, x, title): a line per group (its mean over seeds) in a shaded band from
    its lowest to its highest seed. Groups without a metric have no line; None when no panel has any."""
    plt = pyplot()
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    drawn = False
    for ax, (key, x, title) in zip(axes.flat, panels):
        for color, (label, runs) in enumerate(groups.items()):
            found = band(runs, key, x)
            if found is None:
                continue
            xs, mean, low, high = found
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            ax.plot(xs, mean, color=palette(color % 10), label=f"{label}{seeds}", linewidth=1.4)
            if len(runs) > 1:
                ax.fill_between(xs, low, high, color=palette(color % 10), alpha=0.2, linewidth=0)
            drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlabel({ELAPSED_S: "seconds", TOKENS: "tokens"}.get(x, x))
        if key.startswith(DIAG_PREFIX):
            ax.set_ylim(bottom=0)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if not drawn:
        plt.close(fig)
        return None
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
        handles, labels = next(
            (ax.get_legend_handles_labels() for ax in axes.flat if ax.get_legend_handles_labels()[0]), ([], [])
        )
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.subplots_adjust(top=0.85)
    return save_figure(fig, path)


def plot_tuning(plan: Mapping, path: Path) -> Path | None:
    """Final val loss against each searched key (one panel per key, log axis for log spaces), a
    line per optimizer through its trials, the winner circled; from a tuning's plan (eval/tuning.py)."""
    plt = pyplot()
    keys = list(dict.fromkeys(key for entry in plan["optimizers"].values() for key in entry["space"]))
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, key in zip(axes[0], keys):
        for color, (optimizer, entry) in enumerate(plan["optimizers"].items()):
            if key not in entry["space"]:
                continue
            points = sorted(
                (trial["settings"][key], load_run(Path(trial["run"])).final_val_loss) for trial in entry["trials"]
            )
            points = [(x, y) for x, y in points if y is not None]
            if not points:
                continue
            ax.plot(*zip(*points), marker="o", color=palette(color % 10), label=optimizer)
            winner = entry.get("winner")
            if winner and winner.get("final_val_loss") not in (None, float("inf")):
                ax.scatter(
                    [winner["settings"][key]],
                    [winner["final_val_loss"]],
                    s=160,
                    facecolors="none",
                    edgecolors=palette(color % 10),
                )
            if entry["space"][key].get("log"):
                ax.set_xscale("log")
        ax.set_xlabel(f"optim.{key}")
        ax.set_ylabel("final val loss (trial seed)")
        ax.set_title(f"tuning: final val loss against {key} (circled: the winner)", fontsize=9)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
