"""The comparison report over runs (scripts/report.py): groups by optimizer and setting (seeds
pooled), a table, what it found, a pairwise test, and plots.

`comparison_report(inputs, out, ...)` writes REPORT and CURVES into `out`, and TUNING when an input
is a tuning's folder (eval/tuning.py); scripts/report.py is its command, and its docstring says
what each holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from eval.plots import LOSS_PANELS, plot_groups, plot_tuning
from eval.report import (
    PROBLEMS_HEADING,
    comparison_table,
    findings_bullets,
    groups_of,
    pairwise,
    problems,
    shared_value,
)
from eval.runs import Run, group_runs, load_runs
from eval.tuning import PLAN
from train.files import atomic_write

REPORT, CURVES, TUNING = "report.md", "curves.png", "tuning.png"


def settings_line(runs: Sequence[Run]) -> str:
    """What the compared runs share: model, data, batch, steps, seeds (a set where they differ)."""
    configured = [run for run in runs if run.config]

    def of(*keys: str) -> str:
        return shared_value(run.setting(*keys) for run in configured)

    tokenizer = shared_value(run.config["data"].get("tokenizer", "gpt2") for run in configured)
    return (
        f"{len(runs)} runs; model {of('model', 'name')} (MLP x{of('model', 'mlp_expansion')}), "
        f"data {of('data', 'name')} ({tokenizer}), {of('train', 'steps')} steps of {of('train', 'batch_tokens')} "
        f"tokens, seeds {shared_value(run.seed for run in configured)}"
    )


def log_to_wandb(mode: str, table_md: str, out: Path) -> None:
    """The comparison table as a W&B table, in a run of job_type "report"."""
    import wandb

    lines = [line for line in table_md.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = rows[0], rows[2:]
    run = wandb.init(mode=mode, project="aurora-bench", job_type="report", name=f"report-{out.name}", dir=str(out))
    run.log({"comparison": wandb.Table(columns=header, data=body)})
    run.finish()


def comparison_report(
    inputs: Sequence[Path],
    out: Path,
    baseline: str | None = None,
    compare: Sequence[str] | None = None,
    target: float | None = None,
    wandb: str = "disabled",
) -> tuple[str, list[Path]]:
    """Write the report of the runs in `inputs` into `out`; returns its text and the files written.
    baseline, compare: group labels (ValueError naming the groups for an unknown one); target: a
    val loss (default: the runs' protocol target); wandb: "offline" or "online" logs the table."""
    runs = load_runs(inputs)
    grouped = group_runs(runs)
    groups = groups_of(grouped)
    labels = [group.label for group in groups]
    for label in [baseline, *(compare or [])]:
        if label is not None and label not in labels:
            raise ValueError(f"no group is labelled {label!r}; the groups are {labels}")
    targets = {run.config.get("protocol", {}).get("target") for run in runs if run.config} - {None}
    target = target if target is not None else (targets.pop() if len(targets) == 1 else None)

    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(groups, baseline=baseline, target=target)
    sections = ["# Comparison", settings_line(runs), table, "## What it found", "\n".join(findings_bullets(groups))]
    if compare:
        by_label = {group.label: group for group in groups}
        sections += ["## Pairwise", "\n".join(pairwise(by_label[compare[0]], by_label[compare[1]]))]
    missing = problems(groups)
    if missing:
        sections += [f"## {PROBLEMS_HEADING}", "\n".join(f"- {line}" for line in missing)]
    text = "\n\n".join(sections)
    outputs = [atomic_write(out / REPORT, text + "\n"), plot_groups(grouped, LOSS_PANELS, out / CURVES)]
    for path in inputs:
        if (path / PLAN).is_file():
            outputs.append(plot_tuning(json.loads((path / PLAN).read_text()), out / TUNING))
    if wandb != "disabled":
        log_to_wandb(wandb, table, out)
    return text, [path for path in outputs if path is not None]
