"""Run a Hydra sweep as one process (or one torchrun) per point, resumably.

    python scripts/sweep.py --nproc 8 -- optim=adamw,muon,aurora seed=0,1
    python scripts/sweep.py --jobs 2 -- experiment=neuron_death_bytes        # two CPU runs at a time
    python scripts/sweep.py --dry-run -- experiment=neuron_death

Sweep values come from the command line (Hydra's `a,b,c` and range syntax) and from
`hydra.sweeper.params` in the composed config (as experiment recipes set them). Every point is
composed and checked, values included, before anything is launched: an invalid point, or two
points that would share an out_dir, stops the sweep with one message. The sweep directory (the
folder holding every point's run directory) gets sweep_index.json: each run's directory,
overrides and status. Relaunching skips the runs that are done and resumes the others from
their checkpoints. A failed point does not stop the rest; the summary at the end names it and
the exit code is 1. With --jobs > 1 each run gets train.threads = cores / jobs unless you set it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from train.cli import exit_code
from train.config import compose_sweep
from train.sweep import Point, run_points, summary, sweep_directory, train_command, with_threads


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=positive, default=1, help="processes per point (torchrun --nproc_per_node)")
    parser.add_argument("--jobs", type=positive, default=1, help="points run at the same time (default: 1)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check every point and print the commands; launch nothing"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides with sweeps (after --)")
    args = parser.parse_args(argv)
    overrides = with_threads(args.overrides, args.jobs)
    points = [Point(point, cfg) for point, cfg in compose_sweep(overrides, args.nproc)]
    if args.dry_run:
        for number, point in enumerate(points, 1):
            print(f"[{number}/{len(points)}] {shlex.join(train_command(point, args.nproc))}")
        print(f"all {len(points)} points checked; sweep directory {sweep_directory(points)}")
        return 0
    points, index = run_points(points, ["scripts/sweep.py", *argv], nproc=args.nproc, jobs=args.jobs)
    print(summary(points, index))
    return 1 if any(point.status == "failed" for point in points) else 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
