"""The README's main job: did neurons die, and which optimizer is better?

    python scripts/compare_optimizers.py                            # AdamW, Muon, Aurora x 2 seeds, ~9 min on 2 cores
    python scripts/compare_optimizers.py --optimizers muon aurora --seeds 0 1 2 -- model.mlp_expansion=16
    python scripts/compare_optimizers.py --experiment neuron_death --out runs/nd -- data=shakespeare
    python scripts/compare_optimizers.py --optimizers soap kron dion aurora --out runs/field   # the optimizers extra

Trains every optimizer with every seed on the experiment's setting (default `quickstart`: the tiny
GPT at MLP x8 on the byte-level built-in corpus, 300 steps of 2,048 bytes, neuron diagnostics
every 20 steps), two runs at a time, printing progress with an ETA. Then it writes into --out
(default runs/quickstart): report.md (the setting; a table of final val loss mean ± 95% CI and
range over seeds, exactly-dead and nearly-dead units, starved up-projection rows, leverage CV,
tokens/s; what it found and how sure; a generated sample per optimizer), comparison.png (val
loss with a seed band next to the death and starvation panels), the runs' directories and
sweep_index.json. --optimizers takes any conf/optim name: the field's optimizers (soap, kron, lion,
schedulefree_adamw, ademamix, mars) need `pip install -e '.[optimizers]'`, and their update
diagnostics read the parameter change of each step (docs/neuron_death.md). Anything after `--`
is a Hydra override for every run. Rerunning with the same --out skips finished runs, resumes
interrupted ones and rewrites the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eval.main_job import DEFAULT_OPTIMIZERS, REPORT, MainJob, main_job_report, run_main_job
from train.cli import exit_code
from train.config import CONF_DIR
from train.sweep import format_duration


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--experiment", default="quickstart", help="conf/experiment option (default: quickstart)")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="where the runs and the report go")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time (default: 2)")
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of each generated sample (0: none)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    available = sorted(p.stem for p in (CONF_DIR / "optim").glob("*.yaml"))
    unknown = [o for o in args.optimizers if o not in available]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; available: {available}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def main(argv: list[str]) -> int:
    job = MainJob(**vars(parse_args(argv)))
    points, index = run_main_job(job, ["scripts/compare_optimizers.py", *argv])
    report, figure, elapsed = main_job_report(job, points)
    print("\n" + report)
    print("outputs:")
    for point in points:
        print(f"  {point.out_dir}  (metrics.jsonl, console.log, checkpoints/)")
    print(f"  {job.out / REPORT}\n  {figure or '(no figure: nothing was logged)'}\n  {index.path}")
    print(f"training time per run: up to {format_duration(elapsed)}; rerun the same command to resume or re-report")
    return 1 if any(point.status == "failed" for point in points) else 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
