"""Equal-budget tuning: every optimizer gets the same number of trials from the search space its
config declares, is judged on final val loss only, and its best setting is re-run on fresh seeds.

    python scripts/tune.py --optimizers adamw muon aurora --trials 8 --seeds 3 --jobs 2 -- experiment=speedrun_tiny
    python scripts/tune.py --optimizers muon aurora --trials 9 --sampler grid -- experiment=quickstart

Search spaces: `search:` in conf/optim/<name>.yaml, e.g. `matrix.lr: {low: 0.005, high: 0.2, log: true}`
(keys under optim.; log-uniform or uniform). Points: a scrambled Sobol sequence seeded by
--sampler-seed (the same positions in every optimizer's space), or a grid of --trials points
(a whole power of the number of dimensions). Each trial runs with seed --trial-seed; the winner
(lowest final val loss; failed or diverged trials lose) is re-run on the seeds after it
(--seeds of them: fresh seeds, so the reported result is not the one selected on). Writes into
--out (default runs/tune): trials/ and final/ run directories, sweep_index.json, tune.json (the
plan and the winners), tuning.md (every trial per optimizer with the winner marked, then the
K-seed result) and tuning.png (final val loss against each searched key, one line per optimizer).
Rerunning resumes. Compare further with scripts/report.py --out DIR runs/tune.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from eval.plots import plot_tuning
from eval.report import comparison_table, findings, groups_of
from eval.runs import FINISHED, group_runs, load_run
from train.cli import exit_code
from train.config import compose_config, compose_sweep
from train.files import atomic_write
from train.sweep import Point, run_points

PLAN = "tune.json"


def search_space(optimizer: str, overrides: list[str]) -> dict[str, dict[str, Any]]:
    space = compose_config([*overrides, f"optim={optimizer}"])["optim"].get("search") or {}
    if not space:
        raise ValueError(f"conf/optim/{optimizer}.yaml declares no search space (search:); scripts/tune.py needs one")
    for key, spec in space.items():
        low, high = spec.get("low"), spec.get("high")
        numbers = isinstance(low, (int, float)) and isinstance(high, (int, float))
        if not (numbers and low < high and (low > 0 or not spec.get("log"))):
            raise ValueError(f"optim.search.{key} of {optimizer} needs low < high (and low > 0 when log), got {spec}")
    return space


def unit_points(trials: int, dims: int, sampler: str, seed: int) -> list[list[float]]:
    """`trials` points in [0, 1]^dims: scrambled Sobol (seeded), or a grid (cell centres)."""
    if sampler == "sobol":
        return torch.quasirandom.SobolEngine(dims, scramble=True, seed=seed).draw(trials).double().tolist()
    per_axis = round(trials ** (1 / dims))
    if per_axis**dims != trials:
        raise ValueError(f"a grid of {trials} trials over {dims} dimension(s) is not whole: use a power, e.g. {per_axis**dims}")
    axis = [(i + 0.5) / per_axis for i in range(per_axis)]
    grid = [[]]
    for _ in range(dims):
        grid = [point + [value] for point in grid for value in axis]
    return grid


def value_at(spec: dict[str, Any], u: float) -> float:
    low, high = spec["low"], spec["high"]
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if spec.get("log") else low + u * (high - low)
    return float(f"{value:.4g}")


def trial_overrides(optimizer: str, space: dict, points: list[list[float]]) -> list[dict[str, float]]:
    return [{key: value_at(spec, u) for (key, spec), u in zip(space.items(), point)} for point in points]


def compose_points(overrides: list[str], out: Path, optimizer: str, kind: str, settings: dict[str, float], seeds: list[int], index: int | None = None):
    name = f"{optimizer}-t{index}" if index is not None else optimizer
    fixed = [f"optim={optimizer}", *(f"optim.{k}={v}" for k, v in settings.items())]
    out_dir = f"out_dir={out / kind / name}" + ("-seed${seed}" if kind == "final" else "")
    return [Point(p, c) for p, c in compose_sweep([*overrides, *fixed, f"seed={','.join(map(str, seeds))}", out_dir])]


def final_loss(point: Point) -> float:
    run = load_run(point.out_dir)
    return run.final_val_loss if run.outcome == FINISHED else math.inf


def trial_table(optimizer: str, trials: list[tuple[dict, Point]], winner: int) -> str:
    keys = list(trials[0][0])
    lines = [f"### {optimizer}", "", "| trial | " + " | ".join(keys) + " | final val loss | status |", "|---:|" + "---:|" * len(keys) + "---:|---|"]
    for i, (settings, point) in enumerate(trials):
        loss = final_loss(point)
        mark = " **(winner)**" if i == winner else ""
        shown = "-" if math.isinf(loss) else f"{loss:.4f}"
        lines.append(f"| {i}{mark} | " + " | ".join(f"{settings[k]:g}" for k in keys) + f" | {shown} | {point.status} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", required=True)
    parser.add_argument("--trials", type=int, default=8, help="trials per optimizer, the same for every one")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds the winner is re-run on (K)")
    parser.add_argument("--trial-seed", type=int, default=0)
    parser.add_argument("--sampler", choices=("sobol", "grid"), default="sobol")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (CPU: 2 on 2 cores)")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    parser.add_argument("--out", type=Path, default=Path("runs/tune"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.seeds < 1 or args.jobs < 1:
        raise ValueError("--trials, --seeds and --jobs must be at least 1")
    overrides = list(args.overrides)
    if args.jobs > 1 and not any(o.startswith("train.threads=") for o in overrides):
        overrides.append(f"train.threads={max(1, (os.cpu_count() or 1) // args.jobs)}")

    plan: dict[str, Any] = {"optimizers": {}, "trials": args.trials, "seeds": args.seeds, "sampler": args.sampler,
                            "sampler_seed": args.sampler_seed, "trial_seed": args.trial_seed, "overrides": args.overrides}
    trials: dict[str, list[tuple[dict, Point]]] = {}
    for optimizer in args.optimizers:  # every point of every optimizer is composed and checked before any runs
        space = search_space(optimizer, overrides)
        settings = trial_overrides(optimizer, space, unit_points(args.trials, len(space), args.sampler, args.sampler_seed))
        trials[optimizer] = [(s, compose_points(overrides, args.out, optimizer, "trials", s, [args.trial_seed], i)[0]) for i, s in enumerate(settings)]
        plan["optimizers"][optimizer] = {"space": space, "trials": [{"settings": s, "run": str(p.out_dir)} for s, p in trials[optimizer]]}
    every_trial = [point for rows in trials.values() for _, point in rows]
    print(f"tuning {len(args.optimizers)} optimizers x {args.trials} trials ({len(every_trial)} runs), then the winners on {args.seeds} fresh seeds each", flush=True)
    run_points(every_trial, ["scripts/tune.py", *argv], nproc=args.nproc, jobs=args.jobs, directory=args.out)

    finals: list[Point] = []
    final_seeds = [args.trial_seed + 1 + k for k in range(args.seeds)]
    for optimizer, rows in trials.items():
        losses = [final_loss(point) for _, point in rows]
        winner = min(range(len(rows)), key=lambda i: losses[i])
        plan["optimizers"][optimizer]["winner"] = {"trial": winner, "settings": rows[winner][0], "final_val_loss": losses[winner]}
        if math.isinf(losses[winner]):
            print(f"{optimizer}: no trial finished with a finite val loss; no winner to re-run", file=sys.stderr)
            continue
        finals += compose_points(overrides, args.out, optimizer, "final", rows[winner][0], final_seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / PLAN, json.dumps(plan, indent=1, default=str) + "\n")
    if finals:
        run_points(finals, ["scripts/tune.py", *argv], nproc=args.nproc, jobs=args.jobs, directory=args.out)

    grouped = group_runs([load_run(point.out_dir) for point in finals])
    groups = groups_of(grouped)
    cfg = every_trial[0].config
    budget = (f"{args.trials} trials x {cfg['train']['steps']} steps of {cfg['train']['batch_tokens']:,} tokens per optimizer "
              f"({args.sampler}, sampler seed {args.sampler_seed}, trial seed {args.trial_seed}), then {args.seeds} fresh seeds "
              f"({', '.join(map(str, final_seeds))}) for the winner")
    figure = plot_tuning(plan, args.out / "tuning.png")
    report = "\n\n".join([
        "# Equal-budget tuning", f"Budget: {budget}. Judged on final val loss only. Overrides: `{' '.join(args.overrides) or '(none)'}`.",
        "## Trials", *[trial_table(o, rows, plan["optimizers"][o]["winner"]["trial"]) for o, rows in trials.items()],
        "## The winners on fresh seeds", comparison_table(groups) if groups else "(no winner finished)",
        "## What it found", "\n".join(line if line.startswith("  ") else f"- {line}" for line in findings(groups)),
    ])
    atomic_write(args.out / "tuning.md", report + "\n")
    print("\n" + report)
    print(f"outputs:\n  {args.out / 'tuning.md'}\n  {figure or '(no tuning figure)'}\n  {args.out / PLAN}\n  {args.out / 'sweep_index.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
