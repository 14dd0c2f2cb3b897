"""Data-parallel scaling on this machine: training tokens/s with 1 process and with N ranks.

    python scripts/bench_scaling.py --nproc 2 -- model=tiny train.steps=12

Runs the same config once in one process (with N threads) and once under torchrun with N
ranks (one thread each), then prints the median tokens/s of each (first two steps left out
as warm-up) and the scaling efficiency (N-rank rate / 1-process rate). Same global batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train.metric_names import TOKENS_PER_S
from train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str], threads: int) -> None:
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def median_rate(run_dir: Path) -> float:
    rates = [r[TOKENS_PER_S] for r in read_metrics(run_dir)][2:]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single, ranks = Path(tmp) / "single", Path(tmp) / "ranks"
        common = ["train.checkpoint_every=0", "train.val_every=0", *args.overrides]
        run([sys.executable, "-m", "train", *common, f"out_dir={single}", f"train.threads={args.nproc}"], args.nproc)
        run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={args.nproc}",
                "-m",
                "train",
                *common,
                f"out_dir={ranks}",
                "train.threads=1",
            ],
            1,
        )
        one, many = median_rate(single), median_rate(ranks)
    print(f"overrides: {' '.join(args.overrides) or '(defaults)'}")
    print("| processes | tokens/s | efficiency |")
    print("|---:|---:|---:|")
    print(f"| 1 ({args.nproc} threads) | {one:,.0f} | 1.00 |")
    print(f"| {args.nproc} (1 thread each) | {many:,.0f} | {many / one:.2f} |")


if __name__ == "__main__":
    main()
