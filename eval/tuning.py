"""Equal-budget tuning (scripts/tune.py): every optimizer gets the same number of trials from the
search space its config declares (`search:` in conf/optim/<name>.yaml), is judged on final val
loss only, and its best setting is re-run on fresh seeds.

    search_space, unit_points, trial_settings   the samplers: a scrambled Sobol sequence or a grid
                                                in [0, 1]^dims, mapped into each optimizer's space
    tune(tuning, command, backend)              the trials, the winners on fresh seeds, PLAN,
                                                tuning.md and tuning.png, in tuning.out
    LocalRuns                                   the default backend: the runs as processes of this
                                                one; eval/study.py's OptunaStudy shares them out
                                                to many workers through an Optuna storage
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from eval.plots import plot_tuning
from eval.report import comparison_table, findings_bullets, groups_of
from eval.runs import FINISHED, group_runs, load_run
from train.config import compose_config, compose_sweep
from train.files import atomic_write
from train.sweep import INDEX, Point, run_points, with_threads

PLAN = "tune.json"  # the plan and the winners, in the tuning's folder (eval/comparison.py plots it)
REPORT = "tuning.md"
FIGURE = "tuning.png"
# The samplers, as the report names them. sobol is the default: a fixed, quasi-random plan gives
# every optimizer the same kind of search (AlgoPerf's external tuning does the same); tpe adapts to
# the trials finished so far, so it needs a study that holds them (scripts/tune.py --storage).
SAMPLERS = {
    "sobol": "quasi-random: scrambled Sobol",
    "grid": "grid",
    "tpe": "Optuna's TPE: adaptive",
}
ADAPTIVE = ("tpe",)


@dataclass(frozen=True)
class Tuning:
    """One equal-budget tuning, as scripts/tune.py's options set it (its help says what each does)."""

    optimizers: list[str]
    trials: int
    seeds: int
    trial_seed: int
    sampler: str
    sampler_seed: int
    jobs: int
    nproc: int
    out: Path
    overrides: list[str]
    trial_steps: int | None = None  # None: the trials run as many steps as the winners

    @property
    def trial_overrides(self) -> tuple[str, ...]:
        """What a trial adds to every run's overrides: the shorter horizon, when one is set."""
        return (f"train.steps={self.trial_steps}",) if self.trial_steps else ()

    @property
    def run_overrides(self) -> list[str]:
        """The overrides of every run: the user's, the cores shared between the jobs."""
        return with_threads(self.overrides, self.jobs)

    @property
    def final_steps(self) -> int:
        """The winners' horizon: train.steps of every run's overrides."""
        return compose_config(self.run_overrides)["train"]["steps"]

    @property
    def final_seeds(self) -> list[int]:
        """The fresh seeds the winners are re-run on: the ones after the trial seed."""
        return [self.trial_seed + 1 + k for k in range(self.seeds)]

    def points(
        self,
        optimizer: str,
        kind: str,
        settings: dict[str, float],
        seeds: list[int],
        index: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> list[Point]:
        """The composed runs of one setting of an optimizer, a run per seed, in out/<kind>/."""
        name = f"{optimizer}-t{index}" if index is not None else optimizer
        fixed = [f"optim={optimizer}", *(f"optim.{k}={v}" for k, v in settings.items())]
        out_dir = f"out_dir={self.out / kind / name}" + ("-seed${seed}" if kind == "final" else "")
        seed = f"seed={','.join(map(str, seeds))}"
        return [Point(p, c) for p, c in compose_sweep([*self.run_overrides, *extra, *fixed, seed, out_dir])]

    def trial(self, optimizer: str, settings: dict[str, float], index: int) -> Point:
        """Trial `index` of an optimizer: its settings, on the trial seed (and horizon), in out/trials/."""
        return self.points(optimizer, "trials", settings, [self.trial_seed], index, self.trial_overrides)[0]


Trials = dict[str, list[tuple[dict[str, float], Point]]]  # {optimizer: [(settings, its trial run)]}


def search_space(optimizer: str, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The optimizer's `search:` space, each key's range checked."""
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
        raise ValueError(
            f"a grid of {trials} trials over {dims} dimension(s) is not whole: use a power, e.g. {per_axis**dims}"
        )
    axis = [(i + 0.5) / per_axis for i in range(per_axis)]
    grid = [[]]
    for _ in range(dims):
        grid = [point + [value] for point in grid for value in axis]
    return grid


def value_at(spec: dict[str, Any], u: float) -> float:
    """The point u ∈ [0, 1] of a search range, log-uniform or uniform, to 4 significant digits."""
    low, high = spec["low"], spec["high"]
    if spec.get("log"):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    return float(f"{value:.4g}")


def trial_settings(space: dict, points: list[list[float]]) -> list[dict[str, float]]:
    """Each unit point as {searched key: value} in the optimizer's space."""
    return [{key: value_at(spec, u) for (key, spec), u in zip(space.items(), point)} for point in points]


def final_loss(point: Point) -> float:
    """The run's final val loss; +inf when it did not finish (a failed or diverged trial loses)."""
    run = load_run(point.out_dir)
    return run.final_val_loss if run.outcome == FINISHED else math.inf


def winner_at_edge(settings: list[dict[str, float]], winner: int) -> dict[str, str]:
    """{key: "lowest" | "highest"} for each searched key whose winning value is the lowest or the
    highest of the values tried (of three or more): the best setting may lie outside the space."""
    edges = {}
    for key in settings[winner] if settings else ():
        tried = sorted({s[key] for s in settings})
        if len(tried) >= 3 and settings[winner][key] in (tried[0], tried[-1]):
            edges[key] = "lowest" if settings[winner][key] == tried[0] else "highest"
    return edges


def trial_table(optimizer: str, trials: list[tuple[dict, Point]], winner: int) -> str:
    """Markdown: every trial of one optimizer with its settings and loss, the winner marked, and a
    warning when the winner sits at an edge of what was tried."""
    keys = list(trials[0][0])
    lines = [
        f"### {optimizer}",
        "",
        "| trial | " + " | ".join(keys) + " | final val loss | status |",
        "|---:|" + "---:|" * len(keys) + "---:|---|",
    ]
    for i, (settings, point) in enumerate(trials):
        loss = final_loss(point)
        mark = " **(winner)**" if i == winner else ""
        shown = "-" if math.isinf(loss) else f"{loss:.4f}"
        cells = " | ".join(f"{settings[k]:g}" for k in keys)
        lines.append(f"| {i}{mark} | {cells} | {shown} | {point.status} |")
    if math.isfinite(final_loss(trials[winner][1])):
        for key, edge in winner_at_edge([settings for settings, _ in trials], winner).items():
            lines.append(
                f"\nThe winner has the {edge} {key} tried: the best may lie outside the searched space "
                f"(widen optim.search.{key} in {optimizer}'s config to know)."
            )
    return "\n".join(lines)


def plan_header(tuning: Tuning) -> dict[str, Any]:
    """PLAN's options, before each optimizer's entry (its space, trials and winner)."""
    return {
        "optimizers": {},
        "trials": tuning.trials,
        "seeds": tuning.seeds,
        "sampler": tuning.sampler,
        "sampler_seed": tuning.sampler_seed,
        "trial_seed": tuning.trial_seed,
        "trial_steps": tuning.trial_steps,
        "overrides": tuning.overrides,
    }


def planned_settings(tuning: Tuning, space: dict[str, Any]) -> list[dict[str, float]]:
    """Each trial's settings as planned before any runs: the sampler's points in `space`; for an
    adaptive sampler (tpe), no settings yet (its study samples them as trials are taken)."""
    if tuning.sampler in ADAPTIVE:
        return [{} for _ in range(tuning.trials)]
    return trial_settings(space, unit_points(tuning.trials, len(space), tuning.sampler, tuning.sampler_seed))


def plan_trials(tuning: Tuning) -> tuple[dict[str, Any], Trials]:
    """The plan (PLAN's content before the winners) and every optimizer's trial runs, all composed
    and checked before any runs."""
    plan = plan_header(tuning)
    trials: Trials = {}
    for optimizer in tuning.optimizers:
        space = search_space(optimizer, tuning.run_overrides)
        trials[optimizer] = [
            (settings, tuning.trial(optimizer, settings, index))
            for index, settings in enumerate(planned_settings(tuning, space))
        ]
        plan["optimizers"][optimizer] = {
            "space": space,
            "trials": [{"settings": s, "run": str(p.out_dir)} for s, p in trials[optimizer]],
        }
    return plan, trials


class LocalRuns:
    """The trials and the winners' runs as processes of this one (`run_points`, --jobs at a time)."""

    def describe(self, tuning: Tuning) -> str:
        return f"this process, {tuning.jobs} run(s) at a time"

    def run_trials(self, tuning: Tuning, command: list[str]) -> tuple[dict[str, Any], Trials]:
        plan, trials = plan_trials(tuning)
        every_trial = [point for rows in trials.values() for _, point in rows]
        run_points(every_trial, command, nproc=tuning.nproc, jobs=tuning.jobs, directory=tuning.out)
        return plan, trials

    def run_finals(self, tuning: Tuning, finals: list[Point], command: list[str]) -> None:
        run_points(finals, command, nproc=tuning.nproc, jobs=tuning.jobs, directory=tuning.out)


class Backend(Protocol):
    """Where the trials and the winners' runs run: LocalRuns, or eval/study.py's OptunaStudy."""

    def describe(self, tuning: Tuning) -> str: ...

    def run_trials(self, tuning: Tuning, command: list[str]) -> tuple[dict[str, Any], Trials]: ...

    def run_finals(self, tuning: Tuning, finals: list[Point], command: list[str]) -> None: ...


def winners(tuning: Tuning, plan: dict[str, Any], trials: Trials) -> list[Point]:
    """Record each optimizer's winner (lowest final val loss) in the plan; returns the winners'
    runs on the fresh seeds (none for an optimizer whose every trial failed)."""
    finals: list[Point] = []
    for optimizer, rows in trials.items():
        losses = [final_loss(point) for _, point in rows]
        winner = min(range(len(rows)), key=lambda i: losses[i])
        plan["optimizers"][optimizer]["winner"] = {
            "trial": winner,
            "settings": rows[winner][0],
            "final_val_loss": losses[winner],
        }
        if math.isinf(losses[winner]):
            print(f"{optimizer}: no trial finished with a finite val loss; no winner to re-run", file=sys.stderr)
            continue
        finals += tuning.points(optimizer, "final", rows[winner][0], tuning.final_seeds)
    return finals


def tuning_report(
    tuning: Tuning, plan: dict[str, Any], trials: Trials, finals: list[Point], runner: str, finals_ran: bool = True
) -> str:
    """tuning.md: the budget, every trial per optimizer with the winner marked, the winners on
    fresh seeds, and what that comparison found; before the winners have run (finals_ran False),
    the trials and where the winners' runs will be."""
    trial_cfg = next(iter(trials.values()))[0][1].config["train"]
    final_steps = tuning.final_steps
    budget = (
        f"{tuning.trials} trials x {trial_cfg['steps']} steps of {trial_cfg['batch_tokens']:,} tokens per "
        f"optimizer ({SAMPLERS[tuning.sampler]}, sampler seed {tuning.sampler_seed}, "
        f"trial seed {tuning.trial_seed}), then "
        f"{tuning.seeds} fresh seeds ({', '.join(map(str, tuning.final_seeds))}) for the winner, "
        f"{final_steps} steps each"
    )
    if final_steps != trial_cfg["steps"]:
        budget += (
            f" (the trials' horizon is {trial_cfg['steps'] / final_steps:.2g}x the winners': the schedule's "
            "warmup and decay fractions are the same, but the lr best at the short horizon may not be best "
            "at the long one)"
        )
    overrides = " ".join(tuning.overrides) or "(none)"
    if finals_ran:
        groups = groups_of(group_runs([load_run(point.out_dir) for point in finals]))
        results = [
            comparison_table(groups) if groups else "(no winner finished)",
            "## What it found",
            "\n".join(findings_bullets(groups)),
        ]
    else:
        results = [f"Running: {len(finals)} runs in {tuning.out / 'final'}; this file is rewritten when they finish."]
    return "\n\n".join(
        [
            "# Equal-budget tuning",
            f"Budget: {budget}. Judged on final val loss only. Overrides: `{overrides}`. Trials run by {runner}.",
            "## Trials",
            *[trial_table(o, rows, plan["optimizers"][o]["winner"]["trial"]) for o, rows in trials.items()],
            "## The winners on fresh seeds",
            *results,
        ]
    )


def tune(tuning: Tuning, command: list[str], backend: Backend | None = None) -> tuple[str, list[Path | None]]:
    """Run every trial, then each winner on the fresh seeds (a rerun resumes), through `backend`
    (LocalRuns by default), and write PLAN, REPORT and FIGURE into tuning.out (PLAN, FIGURE and a
    first REPORT as soon as the trials are done); returns the report and what it wrote (None: no
    figure), the sweep index last. `command` goes into the sweep index."""
    if tuning.trial_steps and tuning.trial_steps > tuning.final_steps:
        raise ValueError(
            f"--trial-steps {tuning.trial_steps} is longer than the winners' runs (train.steps={tuning.final_steps}): "
            "give fewer, or leave it out to run the trials as long as the winners"
        )
    backend = backend or LocalRuns()
    print(
        f"tuning {len(tuning.optimizers)} optimizers x {tuning.trials} trials, then the winners on {tuning.seeds} "
        f"fresh seeds each; trials run by {backend.describe(tuning)}",
        flush=True,
    )
    plan, trials = backend.run_trials(tuning, command)
    plan["runner"] = backend.describe(tuning)
    finals = winners(tuning, plan, trials)
    tuning.out.mkdir(parents=True, exist_ok=True)
    atomic_write(tuning.out / PLAN, json.dumps(plan, indent=1, default=str) + "\n")
    figure = plot_tuning(plan, tuning.out / FIGURE)
    if finals:  # the trials' report first: the winners' runs may take as long again
        interim = tuning_report(tuning, plan, trials, finals, backend.describe(tuning), finals_ran=False)
        atomic_write(tuning.out / REPORT, interim + "\n")
        backend.run_finals(tuning, finals, command)
    report = tuning_report(tuning, plan, trials, finals, backend.describe(tuning))
    atomic_write(tuning.out / REPORT, report + "\n")
    return report, [tuning.out / REPORT, figure, tuning.out / PLAN, tuning.out / INDEX]
