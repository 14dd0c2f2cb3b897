"""How units die: per-unit traces (diagnostics.trace_every, train/unit_trace.py) aligned on the step
each unit died, summarised per run (`analyse`), as a table (`report`) and a figure (`plot`).

`mechanism_report(run_dirs, out)` writes mechanism.md and mechanism.png into `out`;
scripts/death_mechanism.py is its command, and its docstring says what each candidate explanation
is measured by. A unit of an MLP layer is exactly dead at a traced step when its largest
pre-activation on the probe is ≤ 0; it *died* at trace s when it was alive at the first trace and
dead at s and at every trace after.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eval.plots import pyplot, save_figure
from eval.runs import load_run
from train.unit_trace import load_trace

WINDOW = 20  # traces on each side of the death step


def relative(values: torch.Tensor) -> torch.Tensor:
    """[steps, blocks, units] over each (step, block)'s median unit."""
    return values / values.median(dim=-1, keepdim=True).values.clamp_min(1e-30)


def deaths(trace: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(died, death_index): whether each unit [blocks, units] died for good, and at which trace."""
    dead = trace["pre_max"] <= 0  # [steps, blocks, units]
    stays_dead = dead.flip(0).cumprod(0).flip(0).bool()  # dead at this trace and at every later one
    died = stays_dead[-1] & ~dead[0]
    death_index = torch.where(died, stays_dead.float().argmax(dim=0), torch.full_like(died, -1, dtype=torch.long))
    return died, death_index


def aligned(values: torch.Tensor, died: torch.Tensor, death_index: torch.Tensor) -> torch.Tensor:
    """[units that died, 2·WINDOW + 1] of `values` [steps, blocks, units] around each death (NaN off the ends)."""
    steps = values.shape[0]
    blocks, units = died.nonzero(as_tuple=True)
    rows = torch.full((len(blocks), 2 * WINDOW + 1), float("nan"))
    for k, offset in enumerate(range(-WINDOW, WINDOW + 1)):
        index = death_index[blocks, units] + offset
        valid = (index >= 0) & (index < steps)
        rows[valid, k] = values[index[valid], blocks[valid], units[valid]].float()
    return rows


def nan_median(rows: torch.Tensor) -> torch.Tensor:
    return rows.nanmedian(dim=0).values


def negative_share(rows: torch.Tensor) -> float:
    """The share of the (non-NaN) entries below zero."""
    known = rows[~rows.isnan()]
    return float((known < 0).float().mean()) if known.numel() else float("nan")


def analyse(run_dir: Path) -> dict:
    trace = load_trace(run_dir)
    run = load_run(run_dir)
    every = trace["steps"][1] - trace["steps"][0] if len(trace["steps"]) > 1 else 1
    died, death_index = deaths(trace)
    dead_any = trace["pre_max"] <= 0
    revived = (dead_any[:-1] & ~dead_any[1:]).any(dim=0)  # dead at one trace, alive at the next
    crossings = int((~dead_any[:-1] & dead_any[1:]).sum())  # alive at one trace, dead at the next
    curves = {
        "with_gradient": aligned((trace["grad"] > 0).float(), died, death_index),
        "momentum": aligned(relative(trace["momentum"]), died, death_index),
        "update": aligned(trace["update"], died, death_index),
        "push": aligned(trace["push"] - trace["push_decay"], died, death_index),
        "push_decay": aligned(trace["push_decay"], died, death_index),
        **(
            {
                "push_top": aligned(trace["push_top"] - trace["push_top_decay"], died, death_index),
                "push_top_decay": aligned(trace["push_top_decay"], died, death_index),
            }
            if "push_top" in trace
            else {}
        ),
        **(
            {"own": aligned(trace["own"], died, death_index), "drift": aligned(trace["drift"], died, death_index)}
            if "own" in trace
            else {}
        ),
        "pre_max": aligned(trace["pre_max"], died, death_index),
    }
    before, after = slice(WINDOW - 10, WINDOW), slice(WINDOW + 1, 2 * WINDOW + 1)
    alive_last = ~(trace["pre_max"][-1] <= 0)
    middle = len(trace["steps"]) // 2
    later = min(middle + max(1, 100 // every), len(trace["steps"]) - 1)
    top, live = trace["pre_max"][middle].float(), trace["pre_max"][middle] > 0
    typical = top[live].median()
    summary = {
        "run": run_dir.name,
        "middle_step": trace["steps"][middle],
        "near_zero_middle": float((live & (top < 0.1 * typical)).float().mean()),
        "motion_middle": float((trace["pre_max"][later].float() - top).abs()[live].median() / typical),
        "optimizer": run.optimizer,
        "steps": trace["steps"][-1],
        "trace_every": every,
        "units": died.numel(),
        "died": int(died.sum()),
        "dead_at_end": float((trace["pre_max"][-1] <= 0).float().mean()),
        "revived": int((revived & ~died).sum()),
        "crossings": crossings,
        "median_death_step": float(
            torch.tensor([trace["steps"][i] for i in death_index[died].tolist()]).float().median()
        )
        if died.any()
        else None,
    }
    if died.any():

        def median_over(name: str, window: slice) -> float:
            return float(curves[name][:, window].nanmedian())

        update_push_before = curves["push"][:, before]
        decay_push_before = curves["push_decay"][:, before]
        summary.update(
            with_gradient_before=float(curves["with_gradient"][:, before].nanmean()),
            with_gradient_after=float(curves["with_gradient"][:, after].nanmean()),
            momentum_before=median_over("momentum", before),
            momentum_after=median_over("momentum", after),
            update_before=median_over("update", before),
            update_after=median_over("update", after),
            update_after_live_median=float(trace["update"][-1][alive_last].median()),
            push_before=float(update_push_before.nanmedian()),
            push_after=median_over("push", after),
            decay_before=float(decay_push_before.nanmedian()),
            decay_after=median_over("push_decay", after),
            push_negative_before=negative_share(update_push_before),
            push_negative_after=negative_share(curves["push"][:, after]),
            decay_share_before=float(
                decay_push_before.abs().nansum()
                / (decay_push_before.abs().nansum() + update_push_before.abs().nansum())
            ),
            pre_max_end=median_over("pre_max", slice(2 * WINDOW, 2 * WINDOW + 1)),
        )
        if "own" in curves:
            own, drift = curves["own"][:, before], curves["drift"][:, before]
            summary.update(
                own_before=float(own.nansum(dim=1).nanmedian()),
                drift_before=float(drift.nansum(dim=1).nanmedian()),
                drift_share_before=float(
                    drift.clamp(max=0).nansum() / (drift.clamp(max=0).nansum() + own.clamp(max=0).nansum())
                ),
                # the interval in which the unit crossed zero (from its last live trace to its death)
                own_crossing=float(curves["own"][:, WINDOW].nanmedian()),
                drift_crossing=float(curves["drift"][:, WINDOW].nanmedian()),
            )
        if "push_top" in curves:
            top, top_decay = curves["push_top"][:, before], curves["push_top_decay"][:, before]
            summary.update(
                top_before=float(top.nanmedian()),
                top_negative_before=negative_share(top),
                top_decay_before=float(top_decay.nanmedian()),
                top_net_negative_before=negative_share(top + top_decay),
            )
    if not died.any():
        return {"summary": summary, "curves": {}}
    medians = {name: nan_median(rows) for name, rows in curves.items() if name != "with_gradient"}
    medians["with_gradient"] = curves["with_gradient"].nanmean(dim=0)  # a share, not a median
    return {"summary": summary, "curves": medians}


def plot(results: list[dict], path: Path) -> Path | None:
    plt = pyplot()
    panels = (
        ("with_gradient", "share of the dying units with any gradient (≠ 0)", False),
        ("momentum", "momentum row / layer median", True),
        ("update", "update row / matrix mean", True),
        ("push_top", "update's push on the largest pre-activation", False),
        ("push_top_decay", "weight decay's push on it", False),
        ("pre_max", "largest pre-activation on the probe", False),
        ("own", "top pre-activation moved by the unit's own weights", False),
        ("drift", "... and by the drift of its input", False),
    )
    fig, axes = plt.subplots(2, 4, figsize=(20, 7))
    offsets = list(range(-WINDOW, WINDOW + 1))
    drawn = False
    for index, result in enumerate(results):
        if not result["curves"]:
            continue
        s = result["summary"]
        color = f"C{index % 10}"  # one color per run in every panel, also where a run lacks a curve
        label = f"{s['run']} ({s['died']} units died)"
        for ax, (name, title, log) in zip(axes.flat, panels):
            if name not in result["curves"]:
                continue  # a trace from before push_top was recorded
            ax.plot([k * s["trace_every"] for k in offsets], result["curves"][name].tolist(), label=label, color=color)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("steps from death (median over the units that died)")
            ax.axvline(0, color="grey", linewidth=0.8)
            if log:
                ax.set_yscale("log")
            else:
                ax.axhline(0, color="grey", linewidth=0.8)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


COLUMNS = (
    "run",
    "optimizer",
    "steps",
    "units",
    "died",
    "dead at end",
    "revived",
    "alive → dead crossings",
    "mid-run: live units within 10% of 0 / top pre-activation's change in 100 steps ÷ median",
    "median death step",
    "share with a gradient before → after",
    "momentum before → after",
    "update before → after (live units at end)",
    "update push before / after (share < 0)",
    "decay push before / after",
    "decay share of the push before",
    "top push before: update (share < 0) / decay / net share < 0",
    "top pre-activation moved before death: own / drift (drift's share of the fall)",
    "... and in the interval it crossed zero: own / drift",
)
ALIGNMENT = "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|---|---|---:|---|---|---|"


def summary_cells(s: dict) -> list[str]:
    """One run's row of the table, from its summary; "-" for what it lacks (no unit died, or a
    trace from before the push on the top pre-activation or its own/drift split was recorded)."""
    mid = f"@{s['middle_step']}: {100 * s['near_zero_middle']:.1f}% / {s['motion_middle']:.2f}"
    cells = [
        s["run"],
        s["optimizer"],
        str(s["steps"]),
        str(s["units"]),
        str(s["died"]),
        f"{100 * s['dead_at_end']:.1f}%",
        str(s["revived"]),
        str(s["crossings"]),
        mid,
    ]
    if s["died"] == 0:
        return cells + ["-"] * (len(COLUMNS) - len(cells))
    cells += [
        f"{s['median_death_step']:.0f}",
        f"{100 * s['with_gradient_before']:.0f}% → {100 * s['with_gradient_after']:.0f}%",
        f"{s['momentum_before']:.3g} → {s['momentum_after']:.3g}",
        f"{s['update_before']:.3g} → {s['update_after']:.3g} ({s['update_after_live_median']:.3g})",
        f"{s['push_before']:+.2e} ({100 * s['push_negative_before']:.0f}%) / "
        f"{s['push_after']:+.2e} ({100 * s['push_negative_after']:.0f}%)",
        f"{s['decay_before']:+.2e} / {s['decay_after']:+.2e}",
        f"{100 * s['decay_share_before']:.0f}%",
    ]
    if "top_before" in s:
        cells.append(
            f"{s['top_before']:+.2e} ({100 * s['top_negative_before']:.0f}%) / {s['top_decay_before']:+.2e} / "
            f"{100 * s['top_net_negative_before']:.0f}%"
        )
    else:
        cells.append("-")
    if "own_before" in s:
        cells += [
            f"{s['own_before']:+.3f} / {s['drift_before']:+.3f} ({100 * s['drift_share_before']:.0f}%)",
            f"{s['own_crossing']:+.3f} / {s['drift_crossing']:+.3f}",
        ]
    else:
        cells += ["-", "-"]
    return cells


def report(results: list[dict]) -> str:
    """mechanism.md: what the window and the columns mean, then a row per run."""
    lines = [
        "# How units die: per-unit traces aligned on their death",
        "",
        f"Window: {WINDOW} traces before and after the death step. 'before' = the 10 traces before it, 'after' = "
        f"the {WINDOW} after. Row norms are over their layer's median (update: over the matrix's mean row). Push: the "
        "step's change of the unit's mean pre-activation on the probe (ΔWᵢ·x̄), the update's part and weight decay's "
        "part.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        ALIGNMENT,
    ]
    lines += ["| " + " | ".join(summary_cells(result["summary"])) + " |" for result in results]
    return "\n".join(lines) + "\n"


def mechanism_report(run_dirs: list[Path], out: Path) -> tuple[str, Path | None]:
    """Analyse each run, write mechanism.md and mechanism.png into `out`; returns the report's text
    and the figure (None when no unit died)."""
    results = [analyse(path) for path in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    text = report(results)
    (out / "mechanism.md").write_text(text)
    return text, plot(results, out / "mechanism.png")
