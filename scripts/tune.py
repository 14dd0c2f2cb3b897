"""Equal-budget tuning: every optimizer gets the same number of trials from the search space its
config declares, is judged on final val loss only, and its best setting is re-run on fresh seeds.

    python scripts/tune.py --optimizers adamw muon aurora --trials 8 --seeds 3 --jobs 2 -- experiment=speedrun_tiny
    python scripts/tune.py --optimizers muon aurora --trials 9 --sampler grid -- experiment=quickstart

Search spaces: `search:` in conf/optim/<name>.yaml, e.g. `matrix.lr: {low: 0.005, high: 0.2, log: true}`
(keys under optim.; log-uniform or uniform). Points: a scrambled Sobol sequence seeded by
--sampler-seed (the same positions in every optimizer's space), or a grid of --trials points
(a whole power of the number of dimensions). Each trial runs with seed --trial-seed; the winner
(lowest final val loss; failed or diverged trials lose) is re-run on the seeds after it
(--seeds of them: fresh seeds, so the reported result is not the one selected on). --trial-steps
runs the trials on a shorter horizon than the winners (the same schedule fractions; the report says
so, as the best lr can move with the horizon). Writes into
--out (default runs/tune): trials/ and final/ run directories, sweep_index.json, tune.json (the
plan and the winners), tuning.md (every trial per optimizer with the winner marked, then the
K-seed result; first written when the trials are done) and tuning.png (final val loss against each
searched key, one line per optimizer). Rerunning resumes. Compare further with scripts/report.py --out DIR runs/tune.

Many workers (docs/cluster.md): with --storage, the trials live in Optuna studies (one per
optimizer, --study-<optimizer>) in a storage every worker shares, `journal:PATH` (a file on a shared
file system) or an RDB URL; start the same command on each worker, with the same --out on a shared
file system. Each worker takes planned trials one at a time (--jobs then only shares a machine's
cores between the workers on it), a trial killed with its worker is resumed by the next one, and
every worker that finishes writes the report. --sampler tpe (Optuna's TPE, adaptive) needs --storage.

    python scripts/tune.py --optimizers adamw muon --trials 8 --storage journal:runs/tune/optuna.log \\
        --jobs 2 -- experiment=speedrun_tiny            # in two shells: two workers, one study
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.study import OptunaStudy
from eval.tuning import ADAPTIVE, SAMPLERS, Tuning, tune
from train.cli import exit_code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", required=True)
    parser.add_argument("--trials", type=int, default=8, help="trials per optimizer, the same for every one")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds the winner is re-run on (K)")
    parser.add_argument("--trial-seed", type=int, default=0)
    parser.add_argument(
        "--trial-steps", type=int, help="steps of each trial, when shorter than the winners' runs (train.steps)"
    )
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default="sobol", help="sobol (default), grid, tpe")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (CPU: 2 on 2 cores)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    parser.add_argument("--out", type=Path, default=Path("runs/tune"))
    parser.add_argument("--storage", help="journal:PATH or an RDB URL: trials pulled by many workers (Optuna)")
    parser.add_argument("--study", default="tune", help="the Optuna studies' name, before -<optimizer>")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.seeds < 1 or args.jobs < 1 or (args.trial_steps is not None and args.trial_steps < 1):
        raise ValueError("--trials, --seeds, --jobs and --trial-steps must be at least 1")
    if args.sampler in ADAPTIVE and not args.storage:
        raise ValueError(f"--sampler {args.sampler} samples from the trials told so far: give --storage")
    backend = OptunaStudy(args.storage, args.study) if args.storage else None  # needs the cluster extra
    options = {k: v for k, v in vars(args).items() if k not in ("storage", "study")}
    report, (table, figure, plan, index) = tune(Tuning(**options), ["scripts/tune.py", *argv], backend)
    print("\n" + report)
    print(f"outputs:\n  {table}\n  {figure or '(no tuning figure)'}\n  {plan}\n  {index}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
