"""An attempt under a benchmark protocol: N seeds, then a record folder judged by the track's rule.

    python scripts/speedrun.py --seeds 0 1 2 3 --nproc 8 -- optim=aurora_track3 train.steps=3200
    python scripts/speedrun.py --seeds 0 1 -- experiment=speedrun_tiny optim=aurora     # on a CPU
    python scripts/speedrun.py --seeds 0 1 2 3 --record-only -- optim=aurora_track3 train.steps=3200

The recipe is experiment=speedrun_track3 unless the overrides name another protocol recipe
(speedrun_tiny). Only the optimizer, its config, its lr schedule and the seed may differ from
it; anything else is refused unless protocol.unofficial=true, and the record then says
unofficial. Each seed is one run (one torchrun of --nproc processes), run one after another and
resumed if interrupted; then the record folder (default runs/records/<recipe>-<optim option>-<steps>)
gets a README with every seed's loss, the mean, std, the rule's statistic at each validated step,
the first step that passes, the verdict, wall time and hardware, and a copy of each run's logs,
config and code version. Every seed counts: one that diverged makes the verdict FAIL, one that has
not finished (--record-only while it runs, or a failed launch) makes it INCOMPLETE, and the record
names it; the exit code is 0 only when every seed finished. See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from eval.record import attempt_points, default_record_dir, verdict_line, write_record
from eval.runs import load_run
from train.cli import exit_code
from train.sweep import run_points, summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="non-cherry-picked seeds, all reported")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun --nproc_per_node)")
    parser.add_argument("--record", type=Path, default=None, help="the record folder (a taken name gets .2, .3, ...)")
    parser.add_argument(
        "--record-only", action="store_true", help="write the record from the runs there; train nothing"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args(argv)
    points = attempt_points(args.overrides, args.seeds, args.nproc)
    if not args.record_only:
        points, index = run_points(points, ["scripts/speedrun.py", *argv], nproc=args.nproc)
        print(summary(points, index))
    cfg = points[0].config
    command = shlex.join(
        [
            "python",
            "scripts/speedrun.py",
            "--seeds",
            *map(str, args.seeds),
            "--nproc",
            str(args.nproc),
            "--",
            *args.overrides,
        ]
    )
    runs = [load_run(point.out_dir) for point in points]
    record, verdict = write_record(runs, args.record or default_record_dir(points[0]), command)
    print(verdict_line(cfg, verdict, record))
    return 0 if verdict["finished"] == verdict["launched"] else 1


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
