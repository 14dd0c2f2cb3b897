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
import sys
from pathlib import Path

from eval.neuron_death import OUTPUTS, neuron_death_report
from train.cli import exit_code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (config.yaml + metrics.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="where the table and plots go")
    args = parser.parse_args(argv)
    report, outputs = neuron_death_report(args.run_dirs, args.out)
    print(report)
    if len(outputs) < len(OUTPUTS):
        print("note: some runs logged no diagnostics (diagnostics.every: 0?), so some plots were skipped")
    print("outputs:\n" + "\n".join(f"  {path}" for path in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
