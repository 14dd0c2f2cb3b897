"""Sweeps: many runs from one set of overrides, resumable, with an index, progress and a summary.

A sweep's points come from `train.config.compose_sweep` (every point composed and checked before
the first run starts). Its directory is the deepest folder holding every point's out_dir, and
`sweep_index.json` there lists each run: its run directory, overrides and status (pending,
running, done, failed with the error line, or stopped: exit 75, a signal stopped it at a step
boundary). Relaunching the same sweep skips the runs that are done and resumes the rest from their
checkpoints; several sweeps into one folder, or the jobs of a Hydra launcher, share its index
(keyed by run directory, updated under an OS lock).

Two ways to run one, both printing a header per point and a summary at the end:
- `python -m train -m ...`: Hydra's multirun, one point after another in this process, or one
  job per point with a Hydra launcher (`hydra/launcher=submitit_slurm`: train/cluster.py);
  `SweepIndex` is updated by train/__main__.py;
- `run_points`: one process per point (`python -m train`, or torchrun with nproc > 1), up to
  `jobs` at a time, with a progress line and an ETA read from the runs' metrics.jsonl
  (scripts/sweep.py, eval/main_job.py, eval/tuning.py, scripts/speedrun.py); `with_threads` shares
  the cores between the jobs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.cli import STOPPED
from train.files import atomic_write, held_lock, read_jsonl_tail
from train.metric_names import STEP, TRAIN_LOSS, VAL_LOSS
from train.metrics import SWEEP_ENV, read_metrics

INDEX = "sweep_index.json"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Point:
    """One run of a sweep."""

    overrides: list[str]
    config: dict[str, Any]
    status: str = "pending"
    error: str | None = None
    log: Path | None = None  # where a subprocess's output goes
    steps_at_launch: int = 0  # steps it had logged before this launch of the sweep (progress counts the rest)

    @property
    def out_dir(self) -> Path:
        return Path(self.config["out_dir"])

    @property
    def total_steps(self) -> int:
        return self.config["train"]["steps"]

    @property
    def name(self) -> str:
        return self.out_dir.name


def sweep_directory(points: Sequence[Point]) -> Path:
    """The deepest folder that holds every point's run directory."""
    parents = [point.out_dir.resolve().parent for point in points]
    return Path(os.path.commonpath(parents))


TAIL_BYTES = 1 << 20  # a record with diagnostics is some kilobytes; the last one is within the last MiB


def last_record(out_dir: Path) -> dict[str, Any] | None:
    """The last complete record of a run's metrics.jsonl, read from the file's end (progress
    lines read it often, and a long run's file with diagnostics holds megabytes); None when there
    is none yet. A damaged line there (other than a torn last one: `read_jsonl_tail`) never stops
    the sweep: it too gives None, so the run shows no progress and does not count as finished
    (resuming it refuses the damaged file, naming the line: train/metrics.py)."""
    try:
        lines, _ = read_jsonl_tail(out_dir / "metrics.jsonl", TAIL_BYTES)
    except (FileNotFoundError, ValueError):
        return None
    return lines[-1].value if lines else None


def logged_steps(out_dir: Path) -> int:
    """The last step a run has logged (0 for none, or no run there yet)."""
    record = last_record(out_dir)
    return record[STEP] if record else 0


def is_done(point: Point) -> bool:
    """Finished: its last logged step is the last step and its final checkpoint exists."""
    final = point.out_dir / "checkpoints" / f"step_{point.total_steps:07d}"
    return logged_steps(point.out_dir) >= point.total_steps and final.is_dir()


class SweepIndex:
    """sweep_index.json: {"launches": [...], "runs": {run dir: {overrides, status, ...}}},
    rewritten atomically at every change of status. Each change is read, merged and written under
    an OS lock on sweep_index.json.lock, so that the jobs of a Hydra launcher (processes, or nodes
    sharing the file system) each update their own run's entry without losing another's."""

    def __init__(self, points: Sequence[Point], argv: Sequence[str], directory: Path | None = None):
        self.directory = (directory or sweep_directory(points)).resolve()
        self.path = self.directory / INDEX
        launch = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv), "points": len(points)}
        with self._merged() as data:
            data["launches"].append(launch)
            for point in points:
                entry = data["runs"].setdefault(self.key(point), {})
                entry.update(overrides=point.overrides, total_steps=point.total_steps)
                entry.setdefault("status", "pending")

    @contextmanager
    def _merged(self) -> Iterator[dict[str, Any]]:
        """The index as on disk, for the block to change, then written back, all under the lock."""
        with held_lock(self.path.with_name(INDEX + ".lock")):
            data = json.loads(self.path.read_text()) if self.path.is_file() else {"launches": [], "runs": {}}
            yield data
            atomic_write(self.path, json.dumps(data, indent=1) + "\n")

    def key(self, point: Point) -> str:
        return os.path.relpath(point.out_dir.resolve(), self.directory)

    def update(self, point: Point, **values: Any) -> None:
        with self._merged() as data:
            entry = data["runs"][self.key(point)]
            entry.update(status=point.status, error=point.error, logged_steps=logged_steps(point.out_dir), **values)
            entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def refresh(self, points: Sequence[Point]) -> None:
        """Each point's status and error as the index holds them: what the jobs of a launcher that
        ran them in other processes recorded."""
        runs = json.loads(self.path.read_text())["runs"]  # written whole by a rename: never torn
        for point in points:
            point.status, point.error = runs[self.key(point)]["status"], runs[self.key(point)].get("error")


def header(number: int, total: int, point: Point) -> str:
    cfg = point.config
    shown = " ".join(point.overrides).replace("$\\{", "${").replace("\\}", "}")  # the sweeper escapes interpolations
    return (
        f"=== sweep point {number}/{total}: {shown or '(defaults)'} "
        f"| {cfg['optim']['name']} seed {cfg['seed']} | {point.out_dir}"
    )


def summary(points: Sequence[Point], index: SweepIndex | None) -> str:
    """One line per point: status, steps, final val loss (or the error), run directory."""
    lines = [f"sweep summary ({len(points)} runs):"]
    for point in points:
        records = []
        try:
            records = read_metrics(point.out_dir)
        except (FileNotFoundError, ValueError):
            pass
        vals = [r[VAL_LOSS] for r in records if VAL_LOSS in r]
        steps = records[-1][STEP] if records else 0
        result = (
            point.error if point.status == "failed" else (f"val loss {vals[-1]:.4f}" if vals else "no val loss yet")
        )
        lines.append(f"  {point.status:8s} {steps:>6}/{point.total_steps:<6} {result}  {point.out_dir}")
    counts = {status: sum(point.status == status for point in points) for status in ("done", "failed", "stopped")}
    others = [f", {count} {status}" for status, count in counts.items() if count and status != "done"]
    lines.append(f"{counts['done']} of {len(points)} runs done" + "".join(others))
    if index is not None:
        lines.append(f"index: {index.path}")
    return "\n".join(lines)


def with_threads(overrides: Sequence[str], jobs: int) -> list[str]:
    """The overrides with train.threads = cores / jobs appended, so that `jobs` concurrent runs
    share the cores; unchanged for one job or when the overrides set train.threads (`+` or not)."""
    if jobs == 1 or any(o.lstrip("+").startswith("train.threads=") for o in overrides):
        return list(overrides)
    return [*overrides, f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}"]


def train_command(point: Point, nproc: int) -> list[str]:
    return train_argv(point.overrides, nproc)


def train_argv(overrides: Sequence[str], nproc: int = 1) -> list[str]:
    """`python -m train OVERRIDES`, under torchrun on one machine when nproc > 1."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    return [*(torchrun if nproc > 1 else [sys.executable, "-m"]), "train", *overrides]


def _error_line(log: Path) -> str:
    """The run's own `error:` line, else its last line: why a point failed."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["exited without output"])[-1][:300]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(points: Sequence[Point], jobs: int, started: float) -> str:
    """Done count, each running point's step and loss, throughput and an ETA for the whole sweep.

    The ETA assumes the steps still to run cost what the steps run so far in this launch cost
    (points differ in cost, so it is an estimate that improves as the sweep goes)."""
    done = sum(point.status in ("done", "failed", "stopped") for point in points)
    running, steps_now = [], 0
    for point in points:
        if point.status != "running":
            continue
        last = last_record(point.out_dir)
        if last:
            running.append(f"{point.name} {last[STEP]}/{point.total_steps} loss {last[TRAIN_LOSS]:.3f}")
        else:
            running.append(f"{point.name} starting")
    remaining = 0
    for point in points:
        logged = min(logged_steps(point.out_dir), point.total_steps)
        steps_now += logged - point.steps_at_launch
        remaining += 0 if point.status in ("failed", "stopped") else point.total_steps - logged
    elapsed = time.monotonic() - started
    eta = f"ETA {format_duration(remaining * elapsed / steps_now)}" if steps_now > 0 else "ETA -"
    return f"[{done}/{len(points)} done | {elapsed / 60:.1f} min | {eta}] " + "; ".join(running)


def _launch(point: Point, nproc: int, env: dict[str, str] | None, index: SweepIndex) -> subprocess.Popen:
    """Start one point's run in the background, its output in point.log."""
    print(f"    {shlex.join(train_command(point, nproc))}  (log: {point.log})", flush=True)
    point.log.parent.mkdir(parents=True, exist_ok=True)
    # The launch directory stays the working directory, so relative out_dirs and data dirs
    # mean what they meant when the points were composed here.
    child_env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
        SWEEP_ENV: os.environ.get(SWEEP_ENV) or index.directory.name,  # the runs' W&B group
    }
    with open(point.log, "w") as log:
        process = subprocess.Popen(train_command(point, nproc), stdout=log, stderr=subprocess.STDOUT, env=child_env)
    point.status = "running"
    index.update(point)
    return process


def _record_exit(point: Point, code: int, index: SweepIndex) -> None:
    point.status = "done" if code == 0 else "stopped" if code == STOPPED else "failed"
    point.error = None if code == 0 else f"exit {code}: {_error_line(point.log)}"
    index.update(point, exit_code=code)
    print(f"--- {point.name}: {point.status}" + (f" ({point.error})" if point.error else ""), flush=True)


def run_points(
    points: Sequence[Point],
    argv: Sequence[str],
    nproc: int = 1,
    jobs: int = 1,
    progress_every_s: float = 15.0,
    env: dict[str, str] | None = None,
    directory: Path | None = None,
) -> tuple[list[Point], SweepIndex]:
    """Run every point not already done, up to `jobs` processes at a time; returns the points
    with their final status, and the index (in `directory`, by default the sweep directory).
    A failed point does not stop the others."""
    index = SweepIndex(points, argv, directory)
    for point in points:
        point.log = point.out_dir.parent / f".{point.name}.sweep.log"
        if is_done(point):
            point.status = "done"
            index.update(point)
        point.steps_at_launch = logged_steps(point.out_dir)
    todo = [point for point in points if point.status != "done"]
    skipped = len(points) - len(todo)
    print(
        f"sweep: {len(points)} runs in {index.directory}"
        + (f", {skipped} already done and skipped" if skipped else ""),
        flush=True,
    )
    started, last_progress = time.monotonic(), time.monotonic()
    running: list[tuple[Point, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < jobs:
            point = todo.pop(0)
            print(header(points.index(point) + 1, len(points), point), flush=True)
            running.append((point, _launch(point, nproc, env, index)))
        time.sleep(0.5)
        for point, process in list(running):
            code = process.poll()
            if code is not None:
                running.remove((point, process))
                _record_exit(point, code, index)
        if time.monotonic() - last_progress >= progress_every_s and running:
            print(progress_line(points, jobs, started), flush=True)
            last_progress = time.monotonic()
    return list(points), index
