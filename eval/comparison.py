"""One comparison report over runs: groups by optimizer and setting (seeds pooled), a table, what
it found, a pairwise test, and plots.

    python scripts/report.py runs/quickstart --out reports/quickstart
    python scripts/report.py runs/tune --out reports/tune --baseline muon --compare aurora muon
    python scripts/report.py runs/speedrun_tiny/* --out reports/sr --target 1.80 --wandb offline

Inputs: run directories, sweep directories (their sweep_index.json lists the runs, launched or
not) or folders holding run directories. Writes into --out:
  report.md    the settings; a table per group: final val loss mean ± 95% CI and range, best val
               loss, steps and tokens, tokens to --target (default: the runs' protocol target) and
               to the --baseline group's final loss with the speedup against it (first arrival
               on both curves; "≥"/"≤" where one is below it at its first validation), tokens/s,
               optimizer step ms, exactly-dead / nearly-dead / starved fractions and HellaSwag
               (both conventions) when measured; what it found; the pairwise statistics of
               --compare A B (the optimization track's pairwise rule read both ways round, with
               its inputs, Welch's p, and the seed σ its margin assumes against the σ measured);
               and every run that failed (diverged, NaN), has not finished or lacks metrics: never
               ranked, and a group statistic without them says "n of N"
  curves.png   val loss against step, tokens and wall time, a line per group with a seed band
  tuning.png   final val loss against each searched key, when the input is a scripts/tune.py sweep
With --wandb offline|online the table also goes to W&B as a table (a run of job_type "report").
The neuron-death report (scripts/neuron_death_report.py) is the specialised view of the same runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.plots import LOSS_PANELS, plot_groups, plot_tuning
from eval.report import PROBLEMS_HEADING, comparison_table, findings, groups_of, pairwise, problems
from eval.runs import group_runs, load_runs
from train.cli import exit_code
from train.files import atomic_write

TUNING_PLAN = "tune.json"


def settings_line(runs) -> str:
    """What the compared runs share: model, data, batch, steps, seeds."""
    def values(get) -> str:
        found = sorted({str(get(run)) for run in runs if run.config})
        return found[0] if len(found) == 1 else "{" + ", ".join(found) + "}"

    return (
        f"{len(runs)} runs; model {values(lambda r: r.config['model']['name'])} (MLP x{values(lambda r: r.config['model']['mlp_expansion'])}), "
        f"data {values(lambda r: r.config['data']['name'])} ({values(lambda r: r.config['data'].get('tokenizer', 'gpt2'))}), "
        f"{values(lambda r: r.config['train']['steps'])} steps of {values(lambda r: r.config['train']['batch_tokens'])} tokens, "
        f"seeds {values(lambda r: r.seed)}"
    )


def log_to_wandb(mode: str, table_md: str, out: Path) -> None:
    """The comparison table as a W&B table, in a run of job_type "report"."""
    import wandb

    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table_md.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    run = wandb.init(mode=mode, project="aurora-bench", job_type="report", name=f"report-{out.name}", dir=str(out))
    run.log({"comparison": wandb.Table(columns=header, data=body)})
    run.finish()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="run directories, sweep directories or folders of runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", help="a group label: tokens to its final loss and the speedup against it")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two group labels: the pairwise statistics")
    parser.add_argument("--target", type=float, help="a val loss: tokens to reach it (default: the runs' protocol target)")
    parser.add_argument("--wandb", choices=("disabled", "offline", "online"), default="disabled")
    args = parser.parse_args(argv)
    runs = load_runs(args.inputs)
    grouped = group_runs(runs)
    groups = groups_of(grouped)
    labels = [group.label for group in groups]
    for label in [args.baseline, *(args.compare or [])]:
        if label is not None and label not in labels:
            raise ValueError(f"no group is labelled {label!r}; the groups are {labels}")
    targets = {run.config.get("protocol", {}).get("target") for run in runs if run.config} - {None}
    target = args.target if args.target is not None else (targets.pop() if len(targets) == 1 else None)

    args.out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(groups, baseline=args.baseline, target=target)
    sections = ["# Comparison", settings_line(runs), table, "## What it found",
                "\n".join(line if line.startswith("  ") else f"- {line}" for line in findings(groups))]
    if args.compare:
        by_label = {group.label: group for group in groups}
        sections += ["## Pairwise", "\n".join(pairwise(by_label[args.compare[0]], by_label[args.compare[1]]))]
    missing = problems(groups)
    if missing:
        sections += [f"## {PROBLEMS_HEADING}", "\n".join(f"- {line}" for line in missing)]
    outputs = [atomic_write(args.out / "report.md", "\n\n".join(sections) + "\n")]
    outputs.append(plot_groups(grouped, LOSS_PANELS, args.out / "curves.png"))
    for path in args.inputs:
        if (path / TUNING_PLAN).is_file():
            outputs.append(plot_tuning(json.loads((path / TUNING_PLAN).read_text()), args.out / "tuning.png"))
    if args.wandb != "disabled":
        log_to_wandb(args.wandb, table, args.out)
    print("\n\n".join(sections))
    print("outputs:\n" + "\n".join(f"  {path}" for path in outputs if path is not None))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
