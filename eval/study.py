"""Tuning on many workers (scripts/tune.py --storage): eval/tuning.py's protocol with its trials
held in an Optuna study that every worker shares, so that any number of workers, on one machine or
many, pull trials from it and no trial runs twice.

    open_storage(url)      `journal:PATH` (Optuna's journal file: no server, a file system every
                           worker shares) or an RDB URL (sqlite:///..., postgresql://...)
    OptunaStudy            the backend `tune` runs the trials and the winners' runs through

Each optimizer has its own study, `<study>-<optimizer>`, holding exactly --trials trials, planned
once under an OS lock in the tuning folder, each with its plan index: with the sobol or grid
sampler, the settings eval/tuning.py's plan gives (the very trials of a local tuning); with tpe,
none: Optuna's TPE samples a trial's settings when a worker takes it, from the trials finished by
then. The budget is the plan's: a worker never creates a trial, it takes planned ones.

A worker owns a trial while it holds an OS lock (flock) on the trial's claim file in the tuning
folder, from taking it until the study is told its final val loss (or FAIL: a failed or diverged
run). A worker killed mid-trial loses the lock with its life, and the trial stays RUNNING: the next
worker to look takes the lock and resumes the trial's run directory from its newest checkpoint,
with the trial's number and settings. So a trial is resumed, never lost; it is told once, by the
one worker holding its lock, and a told trial is never taken again. The winners' runs are shared
out the same way, and every worker that finishes writes the same report.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.tuning import Trials, Tuning, final_loss, plan_header, planned_settings, search_space
from train.files import held_lock
from train.rundir import LOCK
from train.sweep import Point, is_done, run_points

JOURNAL = "journal:"
PLAN_INDEX = "plan_index"  # a trial's user attribute: its place in the optimizer's budget
WORKER = "worker"  # a trial's user attribute: host:pid of the worker that last took it


def open_storage(url: str):
    """The study storage `url` names: `journal:PATH`, a journal file (created when absent), or an
    RDB URL, which Optuna opens (a database the workers share)."""
    try:
        import optuna
    except ImportError:
        raise ValueError("--storage needs Optuna, of the cluster extra: pip install -e '.[cluster]'") from None

    if url.startswith(JOURNAL):
        path = Path(url.removeprefix(JOURNAL)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"--storage {url!r}: give journal:PATH (a file every worker sees) or an RDB URL")
    return optuna.storages.RDBStorage(url)


def _claimed(claim: Path, work: Callable[[], None], wait: bool) -> bool:
    """Run `work` holding the OS lock on `claim`; False (and nothing run) when another process
    holds it and `wait` is false."""
    with held_lock(claim, wait) as mine:
        if mine:
            work()
        return mine


def _each_claimed(items: Sequence[Any], claim_of: Callable[[Any], Path], work: Callable[[Any], None]) -> None:
    """`work` on every item whose claim is free, then on the others once their holders let go:
    a holder that died lets go at once, one that lives when it is done (and `work` sees that)."""
    waiting = [item for item in items if not _claimed(claim_of(item), lambda item=item: work(item), wait=False)]
    for item in waiting:
        _claimed(claim_of(item), lambda item=item: work(item), wait=True)


def _wait_for_run_directory(point: Point) -> None:
    """Until no launch holds the run directory: a killed worker's training may outlive it."""
    if (point.out_dir / LOCK).is_file():
        with held_lock(point.out_dir / LOCK):
            pass


class OptunaStudy:
    """The trials and winners' runs of one tuning, pulled from Optuna studies in `storage`."""

    def __init__(self, storage: str, study: str):
        self.storage_url, self.name = storage, study
        self.storage = open_storage(storage)

    def describe(self, tuning: Tuning) -> str:
        return f"the workers of Optuna studies {self.name}-<optimizer> in {self.storage_url}"

    def _study(self, tuning: Tuning, optimizer: str, space: dict[str, Any]):
        """The optimizer's study with its --trials trials planned: created and planned by the
        first worker, under an OS lock; a study planned with other options is refused."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # sobol and grid enqueue every trial's settings; only tpe samples
        sampler = optuna.samplers.TPESampler(seed=tuning.sampler_seed) if tuning.sampler == "tpe" else None
        name = f"{self.name}-{optimizer}"
        options = {k: v for k, v in plan_header(tuning).items() if k != "optimizers"}
        with held_lock(tuning.out / ".study.lock"):
            study = optuna.create_study(
                storage=self.storage, study_name=name, direction="minimize", sampler=sampler, load_if_exists=True
            )
            planned = study.user_attrs.get("options")
            if planned is not None and planned != options:
                raise ValueError(
                    f"Optuna study {name} in {self.storage_url} was planned with {planned}, not {options}; "
                    "give the same options, or another --study"
                )
            study.set_user_attr("options", options)
            taken = {trial.user_attrs[PLAN_INDEX] for trial in study.get_trials(deepcopy=False)}
            for index, settings in enumerate(planned_settings(tuning, space)):
                if index not in taken:
                    study.enqueue_trial(settings, user_attrs={PLAN_INDEX: index})
        return study

    def _run_trial(self, tuning: Tuning, study, optimizer: str, space: dict, frozen, command: list[str]) -> None:
        """Take the trial (its claim is held), run or resume it, tell the study its result."""
        import optuna
        from optuna.trial import TrialState

        trial_id = frozen._trial_id
        state = self.storage.get_trial(trial_id).state
        if state.is_finished():
            return  # told by the worker that held the claim before
        if state == TrialState.WAITING:
            self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        self.storage.set_trial_user_attr(trial_id, WORKER, f"{socket.gethostname()}:{os.getpid()}")
        trial = optuna.Trial(study, trial_id)
        settings = {k: trial.suggest_float(k, s["low"], s["high"], log=bool(s.get("log"))) for k, s in space.items()}
        point = tuning.trial(optimizer, settings, frozen.user_attrs[PLAN_INDEX])
        _wait_for_run_directory(point)
        run_points([point], command, nproc=tuning.nproc, directory=tuning.out)
        loss = final_loss(point)
        study.tell(trial, loss) if math.isfinite(loss) else study.tell(trial, state=TrialState.FAIL)

    def _take_trials(self, tuning: Tuning, optimizer: str, command: list[str]) -> tuple[dict[str, Any], list]:
        """Run the optimizer's trials that no live worker holds, wait for the others; returns its
        search space and its trials, all told, in plan order."""
        from optuna.trial import TrialState

        space = search_space(optimizer, tuning.run_overrides)
        study = self._study(tuning, optimizer, space)
        print(f"{optimizer}: taking the trials of Optuna study {study.study_name}", flush=True)
        _each_claimed(
            study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)),
            lambda frozen: tuning.out / "trials" / f".{optimizer}-t{frozen.user_attrs[PLAN_INDEX]}.claim",
            lambda frozen: self._run_trial(tuning, study, optimizer, space, frozen, command),
        )
        return space, sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.user_attrs[PLAN_INDEX])

    def run_trials(self, tuning: Tuning, command: list[str]) -> tuple[dict[str, Any], Trials]:
        """Every optimizer's trials, run by this worker or another; the plan and the trials once
        all are told (PLAN names the worker, host:pid, that ran each)."""
        from optuna.trial import TrialState

        plan, trials = plan_header(tuning), {}
        for optimizer in tuning.optimizers:
            space, told = self._take_trials(tuning, optimizer, command)
            trials[optimizer] = []
            for trial in told:
                point = tuning.trial(optimizer, trial.params, trial.user_attrs[PLAN_INDEX])
                point.status = "done" if trial.state == TrialState.COMPLETE else "failed"
                trials[optimizer].append((trial.params, point))
            rows = [
                {"settings": settings, "run": str(point.out_dir), "worker": trial.user_attrs[WORKER]}
                for trial, (settings, point) in zip(told, trials[optimizer])
            ]
            plan["optimizers"][optimizer] = {"space": space, "trials": rows}
        return plan, trials

    def run_finals(self, tuning: Tuning, finals: list[Point], command: list[str]) -> None:
        """The winners' runs, each by one worker (claimed like a trial)."""

        def run_unless_done(point: Point) -> None:
            if not is_done(point):
                _wait_for_run_directory(point)
                run_points([point], command, nproc=tuning.nproc, directory=tuning.out)

        _each_claimed(finals, lambda point: point.out_dir.parent / f".{point.name}.claim", run_unless_done)
