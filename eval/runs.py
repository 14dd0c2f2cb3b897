"""Run directories as data for reports: each run's config, metrics and what it lacks.

    load_runs(paths)      run directories, sweep directories (their sweep_index.json) or folders
                          of runs -> [Run], each with `problems` naming what is missing or partial
    group_runs(runs)      {label: [runs that differ only in their seed]}

A run with a missing config, no metrics, a run cut short or no validation loss is still a Run:
reports list it with its problems instead of dropping it or failing. Only a path that does not
exist is an error. Each run has one `outcome`, the rule records and reports share:
    finished    it validated at its last step, with a finite loss
    failed      a failed run, counted as a loss above any target: its last val loss is not finite
                (its parameters were not), or it diverged: exit 3 (train/cli.py) in the sweep index
                of the sweep that launched it. A run launched by hand that diverges stops before
                logging the step (its `error:` line goes to stderr only), so its directory holds no
                such fact: it reads as unfinished. A non-finite train loss is not taken as failure:
                with train.max_skipped_steps it is a skipped step of a run that goes on.
    unfinished  anything else: still running, stopped or interrupted (its command resumes it), never
                started
The reports (eval/comparison.py, eval/neuron_death.py, eval/record.py and the README's main job,
eval/main_job.py) all read runs through here.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.cli import DIVERGED
from train.metric_names import HELLASWAG_LLMC_ACC_NORM, HELLASWAG_LM_EVAL_ACC_NORM, HELLASWAG_N, STEP, VAL_LOSS
from train.metrics import read_metrics
from train.rundir import effective_config, flatten
from train.schema import NOT_SETTINGS
from train.sweep import INDEX

OPTIMIZER_ORDER = ("adamw", "muon", "normuon", "unormuon", "aurora", "riemannian_aurora")
FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"


@dataclass
class Run:
    """One run directory. config is {} and records [] where their files are missing."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    label: str = ""  # set by group_runs: the optimizer and the settings that set it apart
    launch_failure: str | None = None  # set by load_run: the sweep index's error line when it exited as diverged

    @property
    def optimizer(self) -> str:
        return self.config.get("optim", {}).get("name", "?")

    @property
    def seed(self) -> Any:
        return self.config.get("seed", "?")

    @property
    def name(self) -> str:
        """ "seed N", or the directory's name when it holds no config to read the seed from."""
        return f"seed {self.config['seed']}" if "seed" in self.config else self.path.name

    @property
    def expansion(self) -> float | None:
        value = self.config.get("model", {}).get("mlp_expansion")
        return None if value is None else float(value)

    @property
    def total_steps(self) -> int | None:
        return self.config.get("train", {}).get("steps")

    @property
    def steps(self) -> int:
        return self.records[-1][STEP] if self.records else 0

    def setting(self, *keys: str) -> Any:
        """config[keys[0]][keys[1]]...; "-" where the config has no such key."""
        value: Any = self.config
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return "-"
            value = value[key]
        return value

    def series(self, key: str, x: str = STEP) -> list[tuple[float, Any]]:
        """[(x, value)] of every record holding `key` (x: step, tokens or elapsed_s)."""
        return [(r[x], r[key]) for r in self.records if key in r and x in r]

    def last(self, key: str) -> Any:
        points = self.series(key)
        return points[-1][1] if points else None

    def near(self, key: str, step: int | None) -> tuple[int, Any] | None:
        """(logged step, value) of `key` at the logged step nearest `step` (None: the last one);
        None when never logged or when the run ended before `step`."""
        points = self.series(key)
        if not points or (step is not None and step > self.steps):
            return None
        if step is None:
            return points[-1]
        return min(points, key=lambda point: abs(point[0] - step))

    def over_blocks(self, pattern: re.Pattern, reduce: Callable[[list[float]], float]) -> float | None:
        """`reduce` (min or max) over the blocks of a per-block metric (keys matching `pattern`), at
        the last diagnostic that logged it: the worst block, where a pooled fraction can hide one
        block's collapse."""
        for record in reversed(self.records):
            found = [value for key, value in record.items() if pattern.fullmatch(key)]
            if found:
                return reduce(found)
        return None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.records if key in r]
        return statistics.median(values) if values else None

    @property
    def final_val_loss(self) -> float | None:
        """The val loss at the last step, when the run got there and measured it (NaN stays NaN)."""
        vals = self.series(VAL_LOSS)
        return vals[-1][1] if vals and vals[-1][0] == self.total_steps else None

    @property
    def failure(self) -> str | None:
        """What shows that the run failed (the module's docstring), or None."""
        vals = self.series(VAL_LOSS)
        if vals and not math.isfinite(vals[-1][1]):
            at_end = vals[-1][0] == self.total_steps
            return f"failed: val loss {vals[-1][1]} at {'its last step' if at_end else f'step {vals[-1][0]}'}"
        if self.final_val_loss is None and self.launch_failure is not None:
            return f"diverged (sweep index: {self.launch_failure})"
        return None

    @property
    def outcome(self) -> str:
        """FINISHED, FAILED or UNFINISHED (the module's docstring)."""
        if self.failure is not None:
            return FAILED
        return FINISHED if self.final_val_loss is not None else UNFINISHED

    @property
    def best_val_loss(self) -> float | None:
        vals = [value for _, value in self.series(VAL_LOSS)]
        return min(vals) if vals else None

    def hellaswag(self) -> dict[str, float] | None:
        """The newest full HellaSwag result in <run>/eval/ ({convention_acc_norm: ...}), else the
        last in-training subset score; None when never scored."""
        results = sorted((self.path / "eval").glob("hellaswag*.json"), key=lambda p: p.stat().st_mtime)
        if results:
            scores = json.loads(results[-1].read_text())["scores"]
            return {"llmc": scores["llmc"]["acc_norm"], "lm_eval": scores["lm_eval"]["acc_norm"], "n": None}
        last = next((r for r in reversed(self.records) if HELLASWAG_N in r), None)
        if last is None:
            return None
        return {
            "llmc": last[HELLASWAG_LLMC_ACC_NORM],
            "lm_eval": last[HELLASWAG_LM_EVAL_ACC_NORM],
            "n": last[HELLASWAG_N],
        }


def with_outcome(runs: Sequence[Run], outcome: str) -> list[Run]:
    return [run for run in runs if run.outcome == outcome]


def not_finished(runs: Sequence[Run]) -> str:
    """The runs that did not finish and how, e.g. "seed 3 failed, seed 4 unfinished"."""
    return ", ".join(f"{run.name} {run.outcome}" for run in runs if run.outcome != FINISHED)


def load_run(path: Path) -> Run:
    """A Run whatever the directory holds; its problems say what is missing or partial."""
    run = Run(path)
    try:
        run.config = effective_config(path) or {}
        if not run.config:
            run.problems.append("no config.yaml")
    except yaml.YAMLError:
        run.problems.append("config.yaml is not readable YAML")
    try:
        run.records = read_metrics(path)
    except FileNotFoundError:
        run.problems.append("no metrics.jsonl")
    except ValueError as err:
        run.problems.append(str(err))
    run.launch_failure = diverged_launch(path)
    if run.failure is not None:
        run.problems.append(run.failure)
    elif run.config and run.records and run.total_steps and run.steps < run.total_steps:
        run.problems.append(f"unfinished: logged {run.steps} of {run.total_steps} steps")
    elif run.config and not run.records and "no metrics.jsonl" not in run.problems:
        run.problems.append("no step logged")
    if run.records and not run.series(VAL_LOSS):
        run.problems.append("no val loss")
    return run


def diverged_launch(path: Path) -> str | None:
    """The error line a sweep index (sweep_index.json in a folder above the run) holds for the
    run when its last launch exited as diverged (train/cli.py's code 3); None otherwise."""
    run = path.resolve()
    for folder in run.parents:
        index = folder / INDEX
        if not index.is_file():
            continue
        try:
            entry = json.loads(index.read_text())["runs"].get(str(run.relative_to(folder)))
        except (json.JSONDecodeError, KeyError, AttributeError):
            continue  # not an index this code wrote: nothing to read from it
        if entry is not None:
            diverged = entry.get("status") == "failed" and entry.get("exit_code") == DIVERGED
            return entry.get("error") if diverged else None
    return None


def looks_like_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints"))


def _runs_in(path: Path, depth: int) -> list[Path]:
    """A run itself; a sweep directory's runs (its index lists them, launched or not); else the
    runs in the folders below, `depth` levels down at most."""
    if (path / INDEX).is_file():
        return [path / name for name in json.loads((path / INDEX).read_text())["runs"]]
    if looks_like_run(path):
        return [path]
    if depth == 0:
        return []
    children = [child for child in sorted(path.iterdir()) if child.is_dir() and not child.name.startswith(".")]
    return [run for child in children for run in _runs_in(child, depth - 1)]


def run_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Each argument as run directories (see _runs_in), each once, in order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory; give run or sweep directories")
        runs = _runs_in(path, depth=3)
        if not runs:
            raise FileNotFoundError(f"{path} holds no run directories (config.yaml, metrics.jsonl or checkpoints/)")
        found += runs
    return list(dict.fromkeys(found))


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(path) for path in run_paths(paths)]


def optimizer_rank(name: str) -> tuple[int, str]:
    return (OPTIMIZER_ORDER.index(name) if name in OPTIMIZER_ORDER else len(OPTIMIZER_ORDER), name)


def setting_values(
    runs: Sequence[Run], flat: Sequence[dict[str, Any]], own_columns: Sequence[str] = ()
) -> dict[str, dict[str, set[str]]]:
    """{key: {optimizer: the values its runs have for it ("-" where absent)}} for every config
    key besides NOT_SETTINGS, `own_columns` and optim.name; `flat`: the runs' flattened configs."""
    keys = sorted(
        {
            key
            for config in flat
            for key in config
            if not key.startswith(NOT_SETTINGS) and key not in (*own_columns, "optim.name")
        }
    )
    values: dict[str, dict[str, set[str]]] = {key: {} for key in keys}
    for run, config in zip(runs, flat):
        for key in keys:
            values[key].setdefault(run.optimizer, set()).add(repr(config.get(key, "-")))
    return values


def short_names(keys: Sequence[str]) -> list[str]:
    """Each key by its last part (optim.matrix.lr -> lr) where that is unambiguous, else in full."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return last if len(set(last)) == len(last) else list(keys)


def label_runs(runs: Sequence[Run], own_columns: Sequence[str] = ()) -> list[str]:
    """Set each run's label, "optimizer k=v, ..." with the settings that set it apart from other
    runs of its optimizer; returns the full keys of every optimizer's such settings."""
    flat = [flatten(run.config) for run in runs]
    values = setting_values(runs, flat, own_columns)
    # a key whose value differs between two runs of the same optimizer
    varied = [key for key, by_optimizer in values.items() if any(len(found) > 1 for found in by_optimizer.values())]
    names = dict(zip(varied, short_names(varied)))
    for run, config in zip(runs, flat):
        # a setting this optimizer does not have ("-" in all its runs) would only be noise in its label
        own = [key for key in varied if key in config or len(values[key][run.optimizer]) > 1]
        settings = ", ".join(f"{names[key]}={config.get(key, '-')}" for key in own)
        run.label = f"{run.optimizer} {settings}".strip()
    return varied


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """{label: runs}, runs that differ only in their seed pooled, ordered by optimizer then label."""
    label_runs(runs)
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (optimizer_rank(r.optimizer), r.label, str(r.seed))):
        groups.setdefault(run.label, []).append(run)
    return groups
