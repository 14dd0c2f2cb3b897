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
               optimizer step ms (and as a multiple of AdamW's, when one group is AdamW), exactly-dead /
               nearly-dead / starved fractions (dead and starved in the worst block too) and
               HellaSwag (both conventions) when measured; what it found; the pairwise statistics of
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
import sys
from pathlib import Path

from eval.comparison import comparison_report
from train.cli import exit_code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="run directories, sweep directories or folders of runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", help="a group label: tokens to its final loss and the speedup against it")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two group labels: the pairwise statistics")
    parser.add_argument(
        "--target", type=float, help="a val loss: tokens to reach it (default: the runs' protocol target)"
    )
    parser.add_argument("--wandb", choices=("disabled", "offline", "online"), default="disabled")
    args = parser.parse_args(argv)
    text, outputs = comparison_report(args.inputs, args.out, args.baseline, args.compare, args.target, args.wandb)
    print(text)
    print("outputs:\n" + "\n".join(f"  {path}" for path in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
