"""Beyond one machine (docs/cluster.md): sweeps through Hydra's submitit launcher, tuning trials
pulled by many workers from one Optuna study. Tested on local executors: a real SLURM is not here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import micro_overrides
from train.sweep import INDEX, Point, SweepIndex

REPO = Path(__file__).resolve().parent.parent
CLUSTER_EXTRA = "the cluster extra: pip install -e '.[cluster]'"


def start(command: list[str], cwd: Path, **options) -> subprocess.Popen:
    """`command` in the background, its output (stdout and stderr) kept for the assertion messages."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen(command, cwd=cwd, env=env, **output, **options)


def wait_for_steps(run: Path, steps: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until `run` has logged `steps` steps (its process still going)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    pytest.fail(f"{run} did not log {steps} steps (process exit {process.poll()})")


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def launches(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "launches.jsonl").read_text().splitlines()]


def test_jobs_updating_one_sweep_index_keep_each_others_status(tmp_path):
    """A launcher's jobs each hold a copy of the index from the submitting process; every update
    merges into the file as it is now, so one job's status never erases another's."""
    points = [Point([f"seed={s}"], {"out_dir": str(tmp_path / f"s{s}"), "train": {"steps": 4}}) for s in (0, 1)]
    first, second = SweepIndex(points, ["sweep"]), SweepIndex(points, ["sweep"])  # two jobs' copies
    points[0].status = "done"
    first.update(points[0])
    points[1].status = "failed"
    second.update(points[1])
    runs = json.loads((tmp_path / INDEX).read_text())["runs"]
    assert (runs["s0"]["status"], runs["s1"]["status"]) == ("done", "failed")
    points[0].status = points[1].status = "pending"
    first.refresh(points)
    assert [p.status for p in points] == ["done", "failed"]


def test_a_submitit_local_sweep_trains_indexes_and_reports_and_a_preempted_point_resumes_after_its_requeue(
    micro_shards, tmp_path
):
    """`python -m train -m hydra/launcher=submitit_local`: one job per point; submitit's preemption
    signal stops a point at a step boundary after a checkpoint, its job is requeued and the point
    resumes there; the sweep index and the reports read the sweep like any other."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=CLUSTER_EXTRA)
    from eval.runs import FINISHED, load_runs

    steps = 40
    sweep = tmp_path / "sweep"
    out_dir = f"out_dir={sweep}/s" + "${seed}"
    # no periodic checkpoints: the one the point resumes from is the one its stop saved
    overrides = micro_overrides(micro_shards, f"train.steps={steps}", "train.checkpoint_every=0", out_dir, "seed=0,1")
    command = [sys.executable, "-m", "train", "-m", "hydra/launcher=submitit_local", *overrides]
    job = start(command, tmp_path)
    wait_for_steps(sweep / "s0", 3, job)
    holder = int(re.search(r"pid (\d+)", (sweep / "s0" / ".lock").read_text())[1])  # the job's task process
    os.kill(holder, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit, or on preemption
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output[-3000:]
    assert "2 of 2 runs done" in output
    index = json.loads((sweep / INDEX).read_text())["runs"]
    assert {name: entry["status"] for name, entry in index.items()} == {"s0": "done", "s1": "done"}
    first, second = launches(sweep / "s0")
    stopped_at = int(second["resumed_from"].removeprefix("step_"))
    assert first["resumed_from"] is None and 3 <= stopped_at < steps
    assert not (sweep / "s0" / "metrics.discarded.jsonl").exists()  # it stopped at the step it had saved
    assert logged_steps(sweep / "s0") == list(range(1, steps + 1))
    assert len(launches(sweep / "s1")) == 1
    runs = load_runs([sweep])
    assert sorted(run.path.name for run in runs) == ["s0", "s1"] and all(run.outcome == FINISHED for run in runs)


def tune_worker(out: Path, shards: Path, steps: int) -> subprocess.Popen:
    """One scripts/tune.py worker on the study in out/optuna.log, in a session of its own (so that
    killing it kills its training too, as a cluster kills a job's processes)."""
    argv = ["--optimizers", "adamw", "--trials", "2", "--seeds", "1", "--storage", f"journal:{out}/optuna.log"]
    argv += ["--out", str(out), "--", *micro_overrides(shards, f"train.steps={steps}")]
    command = [sys.executable, str(REPO / "scripts" / "tune.py"), *argv]
    return start(command, REPO, start_new_session=True)


def test_two_workers_on_one_study_tell_each_trial_once_and_resume_the_trial_of_a_killed_worker(micro_shards, tmp_path):
    """A worker killed mid-trial leaves its trial RUNNING; of the two workers started then, one takes
    it over and resumes its run directory from the newest checkpoint. The budget is met exactly:
    every planned trial told once, each step of each run logged once, the winner run once."""
    optuna = pytest.importorskip("optuna", reason=CLUSTER_EXTRA)
    from eval.study import PLAN_INDEX, WORKER, open_storage

    out, steps = tmp_path / "tune", 24
    killed = tune_worker(out, micro_shards, steps)
    wait_for_steps(out / "trials" / "adamw-t0", 5, killed)  # past its checkpoint at step 4
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    workers = [tune_worker(out, micro_shards, steps) for _ in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="tune-adamw", storage=open_storage(f"journal:{out}/optuna.log"))
    assert sorted((t.user_attrs[PLAN_INDEX], t.state.name) for t in study.trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    live = {f"{os.uname().nodename}:{worker.pid}" for worker in workers}
    assert {t.user_attrs[WORKER] for t in study.trials} <= live  # the killed worker's trial was taken over
    first, second = launches(out / "trials" / "adamw-t0")
    assert first["resumed_from"] is None and second["resumed_from"] is not None
    for run in ("trials/adamw-t0", "trials/adamw-t1", "final/adamw-seed1"):
        assert logged_steps(out / run) == list(range(1, steps + 1)), run
    assert len(launches(out / "final" / "adamw-seed1")) == 1
    report = (out / "tuning.md").read_text()
    assert "quasi-random: scrambled Sobol" in report and "Optuna studies tune-<optimizer>" in report
    assert report.count("**(winner)**") == 1


def test_the_adaptive_sampler_needs_a_shared_study(tmp_path):
    from tests.test_scripts import load_script

    tune = load_script("tune")
    with pytest.raises(ValueError, match="--sampler tpe samples from the trials told so far: give --storage"):
        tune.main(["--optimizers", "adamw", "--sampler", "tpe", "--out", str(tmp_path)])
