"""Faults injected into training: signals, damaged checkpoints, a full disk, divergence, a second
launch, an extended run, bad shards, a torn metrics line. Each test names the guarantee it
checks (docs/guarantees.md lists them): never more lost than the steps since the last
checkpoint, never damaged state loaded silently, one clear line and a non-zero exit."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from optim import build_optimizer
from tests.conftest import micro_overrides
from train import sweep
from train.checkpoint import CHECKSUMS, CheckpointError, checkpoint_problem, list_checkpoints
from train.cli import exit_code
from train.files import append_durably, read_jsonl, read_jsonl_tail
from train.loop import train, train_run
from train.metrics import read_metrics, wandb_run_id
from train.run import Run, build_run
from train.rundir import RunDir, RunDirError, effective_config, read_launches
from train.schedule import schedule_change_problem
from train.shards import DataError, write_manifest, write_shard
from train.signals import StopSignals, stop_at_once_on_signals

REPO = Path(__file__).resolve().parent.parent


def losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run_dir)]


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)]


def env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for_steps(run_dir: Path, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(read_metrics(run_dir)) >= at_least:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} logged fewer than {at_least} steps in {timeout} s")


# --- signals ------------------------------------------------------------------------------

LONG = ("train.steps=300", "train.checkpoint_every=0", "train.val_every=0", "train.decay_frac=0")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_a_step_boundary_with_a_checkpoint_exit_75_and_the_run_resumes_exactly(
    micro_shards, micro_config, tmp_path, signum
):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'stopped'}", *LONG)
    job = subprocess.Popen(
        [sys.executable, "-m", "train", *overrides], cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True
    )
    wait_for_steps(tmp_path / "stopped", 5)
    job.send_signal(signum)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 75, err
    assert err.strip().splitlines()[-1].startswith("stopped: asked to stop (SIGTERM or SIGINT) at step")
    assert "Traceback" not in err
    [checkpoint] = list_checkpoints(tmp_path / "stopped" / "checkpoints")
    assert checkpoint_problem(checkpoint) is None
    assert int(checkpoint.name.removeprefix("step_")) == steps(tmp_path / "stopped")[-1] < 300  # nothing lost
    resumed = train(micro_config(*LONG, out="stopped"))
    uninterrupted = train(micro_config(*LONG, out="uninterrupted"))
    assert losses(resumed) == losses(uninterrupted)


class Exited(Exception):
    """What os._exit(code) raises in these tests, so that the test process lives on."""


@pytest.fixture
def exits_and_clock(monkeypatch):
    """os._exit raising Exited, and a clock the test moves (clock[0], in seconds)."""

    def exit_now(code):
        raise Exited(code)

    clock = [1000.0]
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    return clock


def test_a_second_signal_aborts_at_once(exits_and_clock, capsys):
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before os.kill returns to Python
        assert stop.received == signal.SIGINT
        assert capsys.readouterr().err == (
            "SIGINT: stopping at the end of this step, after a checkpoint; SIGINT again aborts at once\n"
        )
        exits_and_clock[0] += 1.1
        with pytest.raises(Exited) as exited:
            os.kill(os.getpid(), signal.SIGTERM)
    assert exited.value.args == (128 + signal.SIGTERM,)
    assert "SIGTERM again: aborting now, without a checkpoint" in capsys.readouterr().err


def test_a_second_signal_within_a_second_is_the_same_request(exits_and_clock):
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        exits_and_clock[0] += 0.9
        os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C under torchrun: SIGINT, then SIGTERM forwarded
    assert stop.received == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_signal_outside_the_training_steps_exits_75_at_once(exits_and_clock, capsys):
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop_at_once_on_signals()
        for signum in previous:
            with pytest.raises(Exited) as exited:
                os.kill(os.getpid(), signum)
            assert exited.value.args == (75,)
            name = signal.Signals(signum).name
            assert capsys.readouterr().err.startswith(f"stopped: {name} outside the training steps")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (Linux: /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the signal mask from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_exits_75_at_once_and_changes_nothing(micro_shards, tmp_path, signum):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'run'}", *LONG)
    job = subprocess.Popen(
        [sys.executable, "-m", "train", *overrides], cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not catches(job.pid, signal.SIGTERM):  # Python itself catches SIGINT from the start; SIGTERM is ours
        assert time.monotonic() < deadline and job.poll() is None, "python -m train never installed its SIGTERM handler"
        time.sleep(0.01)
    job.send_signal(signum)  # seconds before the imports are done
    _, err = job.communicate(timeout=60)
    assert job.returncode == 75, err
    assert err.strip().splitlines()[-1].startswith(f"stopped: {signal.Signals(signum).name} outside the training steps")
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_two_ranks_stop_at_the_same_step_when_torchrun_is_sent_sigterm(micro_shards, micro_config, tmp_path):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'ranks'}", *LONG)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "train",
        *overrides,
    ]
    job = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(tmp_path / "ranks", 5)
    job.send_signal(signal.SIGTERM)  # as a scheduler or srun would: torchrun forwards it to every rank
    output, _ = job.communicate(timeout=120)
    stopped_at = re.findall(r"stopped: asked to stop \(SIGTERM or SIGINT\) at step (\d+) of 300", output)
    assert len(stopped_at) == 2 and len(set(stopped_at)) == 1, output[-3000:]  # both ranks, at the same step
    [checkpoint] = list_checkpoints(tmp_path / "ranks" / "checkpoints")
    assert checkpoint_problem(checkpoint) is None
    assert int(checkpoint.name.removeprefix("step_")) == steps(tmp_path / "ranks")[-1] == int(stopped_at[0])
    resumed = train(micro_config(*LONG, out="ranks"))  # on one process
    assert len(losses(resumed)) == 300


# --- checkpoint integrity --------------------------------------------------------------------


def damage(checkpoint: Path, how: str) -> None:
    shard = next(p for p in checkpoint.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    if how == "flip":
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 64])
    else:
        data = data[: len(data) // 2]
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_newest_checkpoint_is_named_set_aside_and_the_run_falls_back_to_the_previous(
    micro_config, how, capsys
):
    full = train(micro_config(out="full"))
    crashed = full.parent / "crashed"
    shutil.copytree(full, crashed)
    damage(crashed / "checkpoints" / "step_0000012", how)
    assert checkpoint_problem(crashed / "checkpoints" / "step_0000012").startswith("__0_0.distcp is")
    resumed = train(micro_config(out="crashed"))
    printed = capsys.readouterr().out
    assert "passed over checkpoint step_0000012: __0_0.distcp is" in printed
    assert "resuming" in printed and "step 8" in printed
    assert losses(resumed) == losses(full)  # retrained steps 9-12 bit-exactly
    assert (crashed / "checkpoints" / "step_0000012.damaged").is_dir()  # kept, not deleted
    launch = read_launches(crashed / "launches.jsonl")[-1]
    assert launch["resumed_from"] == "step_0000008" and launch["damaged_checkpoints_passed_over"][0].startswith(
        "step_0000012"
    )


def test_a_checkpoint_without_checksums_is_incomplete_and_passed_over(micro_config):
    full = train(micro_config(out="full"))
    (full / "checkpoints" / "step_0000012" / CHECKSUMS).unlink()
    assert "no checksums.json" in checkpoint_problem(full / "checkpoints" / "step_0000012")
    assert losses(train(micro_config(out="full"))) == losses(full)  # steps 9-12 again, bit-exactly
    launch = read_launches(full / "launches.jsonl")[-1]
    assert launch["resumed_from"] == "step_0000008"
    assert launch["damaged_checkpoints_passed_over"][0].startswith("step_0000012: no checksums")
    assert (full / "checkpoints" / "step_0000012.damaged").is_dir()
    assert checkpoint_problem(full / "checkpoints" / "step_0000012") is None  # saved again


def test_a_checkpoint_missing_a_file_it_lists_is_named_and_passed_over(micro_config):
    full = train(micro_config(out="full"))
    (full / "checkpoints" / "step_0000012" / "__0_0.distcp").unlink()
    assert checkpoint_problem(full / "checkpoints" / "step_0000012") == "missing __0_0.distcp"
    train(micro_config(out="full"))
    assert read_launches(full / "launches.jsonl")[-1]["resumed_from"] == "step_0000008"


def test_all_checkpoints_damaged_is_refused_not_silently_restarted(micro_config):
    full = train(micro_config(out="full"))
    for checkpoint in list_checkpoints(full / "checkpoints"):
        damage(checkpoint, "truncate")
    with pytest.raises(CheckpointError, match="no intact checkpoint .*step_0000012: __0_0.distcp is truncated"):
        train(micro_config(out="full"))


# --- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_while_saving_names_enospc_cleans_up_and_the_relaunch_resumes(micro_config, monkeypatch):
    import torch.distributed.checkpoint.filesystem as dcp_filesystem

    full = train(micro_config(out="full"))
    run = full.parent / "run"
    real_write = dcp_filesystem._write_item

    def disk_fills(*args, **kwargs):
        if (run / "checkpoints" / "step_0000004").is_dir():  # the disk is full once the first checkpoint is in
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dcp_filesystem, "_write_item", disk_fills)
    with pytest.raises(
        CheckpointError, match=r"no space left on the device while writing checkpoint .*step_0000008 \(ENOSPC\)"
    ) as err:
        train(micro_config(out="run"))
    assert "removed the partial checkpoint" in str(err.value) and "is intact" in str(err.value)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(run / "checkpoints"))
    monkeypatch.setattr(dcp_filesystem, "_write_item", real_write)  # space freed
    assert losses(train(micro_config(out="run"))) == losses(full)


def test_a_save_that_would_not_fit_is_refused_before_writing(micro_config, monkeypatch):
    run = train(micro_config("train.steps=4", "train.decay_frac=0", out="run"))
    usage = shutil.disk_usage(run)
    monkeypatch.setattr("train.checkpoint.shutil.disk_usage", lambda path: usage._replace(free=1000))
    expected = (
        r"not enough free space .*: 0.0 MB free, about 1.0 MB needed \(the last one's size, \+10%\); .* step_0000004"
    )
    with pytest.raises(CheckpointError, match=expected):
        train(micro_config("train.steps=8", "train.decay_frac=0", out="run"))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000004"]


def tiny_filesystem(path: Path, size: str) -> bool:
    path.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_really_full_filesystem_stops_with_one_line_and_keeps_the_previous_checkpoint(micro_config, tmp_path):
    disk = tmp_path / "disk"
    if not tiny_filesystem(disk, "2m"):  # room for two of the micro GPT's ~0.7 MB checkpoints
        pytest.skip("this machine cannot mount a tmpfs (needs root); the ENOSPC path is also tested by patching")
    try:
        with pytest.raises(CheckpointError, match="ENOSPC|not enough free space"):
            train(
                micro_config(
                    "train.steps=40", "train.checkpoint_every=4", "train.keep_checkpoints=null", out=str(disk / "run")
                )
            )
        kept = list_checkpoints(disk / "run" / "checkpoints")
        assert kept and all(checkpoint_problem(p) is None for p in kept)
        assert not [p for p in (disk / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --- divergence ----------------------------------------------------------------------------


MICRO_BATCHES_PER_STEP = 4  # the micro config: 512 tokens a step, micro-batches of 4 x 32


def nan_loss_at(run: Run, step: int) -> Run:
    """`run`, its first micro-batch of training step `step` giving a NaN loss (and NaN gradients)."""
    real_trained, count = run.trained, [0]

    def trained(inputs, targets):
        count[0] += 1
        out = real_trained(inputs, targets)
        return out * float("nan") if count[0] == (step - 1) * MICRO_BATCHES_PER_STEP + 1 else out

    run.trained = trained
    return run


def failed_launch(cfg: dict, capsys, prepare: Callable[[Run], Run] = lambda run: run) -> tuple[int, str]:
    """The exit code and the stderr line of a launch that fails, as python -m train gives them
    (`prepare` injects a fault into the built run)."""
    capsys.readouterr()
    code = exit_code(lambda: train_run(prepare(build_run(cfg))))
    return code, capsys.readouterr().err.strip()


def test_divergence_stops_before_the_update_and_saves_nothing_non_finite(micro_config, capsys):
    code, line = failed_launch(micro_config(out="run"), capsys, prepare=lambda run: nan_loss_at(run, step=6))
    assert code == 3
    assert re.fullmatch(
        r"error: the run diverged at step 6: train loss nan.* last good checkpoint \(step_0000004\); "
        r"start a new out_dir with a lower lr, or resume this one with train.max_skipped_steps=N .*",
        line,
    )
    run = Path(micro_config(out="run")["out_dir"])
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000004"]
    assert steps(run) == [1, 2, 3, 4, 5]


def test_a_budget_of_skipped_steps_skips_the_update_and_counts_it(micro_config):
    run = train_run(nan_loss_at(build_run(micro_config("train.max_skipped_steps=1", out="run")), step=6))
    records = read_metrics(run)
    assert [r["skipped_steps"] for r in records] == [0] * 5 + [1] * 7
    assert math.isnan(records[5]["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in records[6:])


def test_a_skipped_step_gets_no_diagnostics_of_an_update_it_did_not_make(micro_config):
    cfg = micro_config("train.max_skipped_steps=1", "diagnostics.every=2", "diagnostics.probe_tokens=64", out="run")
    records = read_metrics(train_run(nan_loss_at(build_run(cfg), step=6)))
    diagnosed = [r["step"] for r in records if any(key.startswith("diag/") for key in r)]
    assert diagnosed == [2, 4, 8, 10, 12]


def test_the_gradient_norm_is_logged_every_step(micro_config):
    records = read_metrics(train(micro_config(out="run")))
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in records)


def overflowing_optimizer(cfg, model):
    """build_optimizer's optimizer, whose 8th update overflows a parameter to inf (a checkpoint follows it)."""
    optimizer = build_optimizer(cfg, model)
    real_step, count = optimizer.step, [0]

    def step(self, closure=None):
        real_step(closure)
        count[0] += 1
        if count[0] == 8:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))

    optimizer.step = types.MethodType(step, optimizer)  # bound, as the lr scheduler expects
    return optimizer


def test_non_finite_parameters_are_never_checkpointed(micro_config, capsys):
    capsys.readouterr()
    code = exit_code(lambda: train_run(build_run(micro_config(out="run"), make_optimizer=overflowing_optimizer)))
    line = capsys.readouterr().err.strip()
    assert code == 3
    assert line.startswith(
        "error: the parameters are not finite after step 8; nothing was saved (last good checkpoint: step_0000004)"
    )
    assert [p.name for p in list_checkpoints(Path(micro_config(out="run")["out_dir"]) / "checkpoints")] == [
        "step_0000004"
    ]


# --- concurrent launches -------------------------------------------------------------------


def test_a_second_launch_into_a_run_directory_in_use_is_refused_naming_the_holder(micro_config):
    cfg = micro_config(out="run")
    holder = RunDir(cfg["out_dir"])
    holder.lock()
    try:
        with pytest.raises(RunDirError, match=rf"in use by another launch \(host .*, pid {os.getpid()}, since"):
            train(cfg)
    finally:
        holder.unlock()
    train(cfg)  # the lock goes with its holder


def test_a_killed_launch_does_not_block_its_own_resume(micro_shards, micro_config, tmp_path):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'run'}", *LONG)
    job = subprocess.Popen([sys.executable, "-m", "train", *overrides], cwd=REPO, env=env(), stderr=subprocess.DEVNULL)
    wait_for_steps(tmp_path / "run", 3)
    job.kill()
    job.wait()
    assert len(losses(train(micro_config(*LONG, out="run")))) == 300


# --- resume-time config changes ------------------------------------------------------------


def test_a_constant_lr_run_can_be_extended_and_matches_the_longer_run(micro_config):
    short = train(micro_config("train.steps=8", "train.decay_frac=0", out="run"))
    extended = train(micro_config("train.steps=12", "train.decay_frac=0", out="run"))
    assert losses(extended) == losses(train(micro_config("train.steps=12", "train.decay_frac=0", out="straight")))
    assert read_launches(short / "launches.jsonl")[-1]["config_changes"] == {"train.steps": [8, 12]}


def test_extending_a_run_whose_lr_already_decayed_is_refused(micro_config):
    run = train(micro_config("train.steps=8", out="run"))
    with pytest.raises(
        RunDirError,
        match=r"train.steps 8 -> 12 would change the lr schedule of steps already run \(step 6 ran at lr scale 0.75",
    ):
        train(micro_config("train.steps=12", out="run"))
    assert steps(run)[-1] == 8


def test_threads_and_parallelism_may_change_on_resume_and_are_recorded(micro_config):
    run = train(micro_config("train.steps=4", "train.decay_frac=0", out="run"))
    train(micro_config("train.steps=8", "train.decay_frac=0", "train.threads=2", "train.parallelism=fsdp2", out="run"))
    changes = read_launches(run / "launches.jsonl")[-1]["config_changes"]
    assert changes == {"train.parallelism": ["ddp", "fsdp2"], "train.steps": [4, 8], "train.threads": [1, 2]}


def test_refused_changes_list_each_key_with_both_values(micro_config):
    train(micro_config(out="run"))
    with pytest.raises(RunDirError, match=r"optim.matrix.lr: 0.004 -> 0.5, seed: 0 -> 3"):
        train(micro_config("optim.matrix.lr=0.5", "seed=3", out="run"))


# --- input data ----------------------------------------------------------------------------


def test_a_shard_with_an_id_outside_the_vocabulary_is_named(micro_shards, micro_config, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(micro_shards / "micro_val_000000.bin", bad)
    tokens = np.full(60_000, 7)
    tokens[1234] = 600  # the micro model's vocabulary is 512
    write_shard(bad / "micro_train_000001.bin", tokens)
    with pytest.raises(
        DataError, match=r"micro_train_000001.bin holds token id 600 .* outside the model's vocabulary of 512"
    ):
        train(micro_config(f"data.dir={bad}", "train.steps=100", out="run"))


def test_a_torn_last_metrics_line_is_repaired_on_resume_and_kept(micro_config, capsys):
    full = train(micro_config(out="full"))
    crashed = full.parent / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_0000012")
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train_lo')
    resumed = train(micro_config(out="crashed"))
    assert "repaired the torn last line of metrics.jsonl" in capsys.readouterr().out
    assert losses(resumed) == losses(full)
    discarded = [json.loads(line) for line in (crashed / "metrics.discarded.jsonl").read_text().splitlines()]
    assert [r.get("step") for r in discarded] == [9, 10, 11, 12, None] and discarded[-1]["torn_line"].startswith(
        '{"step": 13'
    )


def test_the_one_jsonl_reader_leaves_out_a_torn_last_line_and_refuses_damage_anywhere_else(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n{"step": 3, "train_lo')
    lines, torn = read_jsonl(path)
    assert [(line.number, line.value) for line in lines] == [(1, {"step": 1}), (3, {"step": 2})]
    assert torn == '{"step": 3, "train_lo'
    with pytest.raises(ValueError, match=r"log.jsonl: line 4 is not JSON"):
        read_jsonl(path, appended=False)  # a file written whole has no torn line: its last line is damaged
    path.write_bytes(b'{"step": 1}\n{"note": "\xff"}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl: line 2 is not JSON \(not UTF-8\)"):
        read_jsonl(path)


def test_the_tail_reader_keeps_the_policy_and_leaves_out_the_line_its_start_cuts(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "train_lo')
    lines, torn = read_jsonl_tail(path, max_bytes=40)  # starts inside step 2's line
    assert [(line.number, line.value) for line in lines] == [(-2, {"step": 3})]
    assert torn == '{"step": 4, "train_lo'
    whole_lines = len(b'{"step": 3}\n{"step": 4, "train_lo')
    assert [line.value for line in read_jsonl_tail(path, whole_lines)[0]] == [{"step": 3}]  # starts at a line
    assert [line.value for line in read_jsonl_tail(path, 1 << 20)[0]] == [{"step": s} for s in (1, 2, 3)]
    path.write_bytes(b'{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl: line 2 from the end is not JSON"):
        read_jsonl_tail(path, 1 << 20)


def test_a_sweeps_progress_monitor_survives_a_torn_or_damaged_metrics_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "train_loss": 5.0}\n{"step": 2, "train_lo')
    assert sweep.last_record(tmp_path) == {"step": 1, "train_loss": 5.0} and sweep.logged_steps(tmp_path) == 1
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"st\n{"step": 3}\n')
    assert sweep.last_record(tmp_path) is None and sweep.logged_steps(tmp_path) == 0  # no progress shown
    assert sweep.last_record(tmp_path / "not_started") is None


def test_a_damaged_line_inside_metrics_is_refused_naming_the_file(micro_config):
    full = train(micro_config(out="run"))
    lines = (full / "metrics.jsonl").read_bytes().splitlines()
    lines[3] = b"\xff\xfe garbage"  # not even UTF-8
    (full / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    shutil.rmtree(full / "checkpoints" / "step_0000012")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 4 is not JSON"):
        train(micro_config(out="run"))


KILL_AT = """
import importlib, os, runpy, signal, sys
from pathlib import Path
module, name, when, marker, *overrides = sys.argv[1:]
module = importlib.import_module(module)
real = getattr(module, name)

def hooked(*args, **kwargs):
    if when == "before" and Path(marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if when == "after" and Path(marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(module, name, hooked)
sys.argv = ["train", *overrides]
runpy.run_module("train", run_name="__main__", alter_sys=True)  # python -m train
"""
# Moments of step 8's save (module, function, before or after it, the path that marks step 8's save),
# and the newest intact checkpoint each leaves.
SAVE_MOMENTS = {
    "while DCP writes the shards": (
        "torch.distributed.checkpoint.filesystem",
        "_write_item",
        "after",
        "step_0000008.tmp",
        4,
    ),
    "after meta.pt, before checksums.json": ("train.checkpoint", "_write_checksums", "before", "step_0000008.tmp", 4),
    "after checksums.json, before the rename": ("train.checkpoint", "_write_checksums", "after", "step_0000008.tmp", 4),
    "after the rename, before older ones are pruned": ("train.checkpoint", "fsync_dir", "after", "step_0000008", 8),
}


@pytest.mark.parametrize("moment", SAVE_MOMENTS)
def test_a_launch_killed_while_saving_leaves_the_previous_checkpoint_and_resumes_exactly(
    micro_shards, micro_config, tmp_path, moment
):
    module, function, when, marker, intact = SAVE_MOMENTS[moment]
    killed = tmp_path / "killed"
    overrides = micro_overrides(micro_shards, f"out_dir={killed}", "train.keep_checkpoints=1")
    command = [sys.executable, "-c", KILL_AT, module, function, when, str(killed / "checkpoints" / marker), *overrides]
    done = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    intact_ones = [p.name for p in list_checkpoints(killed / "checkpoints") if checkpoint_problem(p) is None]
    assert intact_ones[-1] == f"step_{intact:07d}"
    # Resumed with another checkpoint_every, which never saves step 8 again: the partial save must still go.
    resumed = train(micro_config("train.checkpoint_every=3", out="killed"))
    assert losses(resumed) == losses(train(micro_config(out="full")))
    assert not list((killed / "checkpoints").glob("*.tmp"))


# --- what a launch writes, and when -----------------------------------------------------------


def test_train_steps_may_shrink_to_the_step_reached_but_not_below():
    constant = {"steps": 4, "warmup_frac": 0.0, "decay_frac": 0.0}
    assert schedule_change_problem(8, constant, resume_step=4) is None
    assert schedule_change_problem(8, constant | {"steps": 3}, resume_step=4) == (
        "train.steps=3 is below step 4, which the run has already reached"
    )


def test_a_decaying_run_extended_from_a_checkpoint_before_its_decay_matches_the_longer_run(micro_config):
    # 8 steps, the last 4 decaying: steps 1-5 run at lr scale 1 (step 5 is the decay's first, at 4/4),
    # step 6 at 0.75. Over 12 steps, step 6 runs at 1: the extension must give it that, not the checkpoint's lr.
    run = train(micro_config("train.steps=8", "train.checkpoint_every=5", out="run"))
    shutil.rmtree(run / "checkpoints" / "step_0000008")  # as if it had crashed after step 5
    extended = train(micro_config("train.steps=12", "train.checkpoint_every=5", out="run"))
    straight = train(micro_config("train.steps=12", "train.checkpoint_every=5", out="straight"))
    assert losses(extended) == losses(straight)
    assert [r["lr_scale"] for r in read_metrics(extended)] == [r["lr_scale"] for r in read_metrics(straight)]


def test_a_val_shard_with_an_id_outside_the_vocabulary_stops_the_run_before_its_run_directory_is_made(
    micro_shards, micro_config, tmp_path
):
    bad = tmp_path / "bad"
    bad.mkdir()
    for shard in micro_shards.glob("micro_train_*.bin"):
        shutil.copy(shard, bad)
    tokens = np.full(8_192, 7)
    tokens[100] = 600  # the micro model's vocabulary is 512
    write_shard(bad / "micro_val_000000.bin", tokens)
    expected = r"micro_val_000000.bin holds token id 600 near token 100, outside the model's vocabulary of 512"
    with pytest.raises(DataError, match=expected):
        train(micro_config(f"data.dir={bad}", out="run"))
    assert not (tmp_path / "run").exists()


def test_a_torn_launch_record_is_kept_in_the_next_one_and_the_next_one_counts(micro_config, capsys):
    run = train(micro_config("train.steps=4", "train.decay_frac=0", out="run"))
    with open(run / "launches.jsonl", "a") as f:
        f.write('{"time": "2026-12-02T08:00:00+0000", "resuming": true, "ar')  # a launch that found the disk full
    train(micro_config("train.steps=8", "train.decay_frac=0", out="run"))
    assert "moved the torn last line of launches.jsonl" in capsys.readouterr().out
    launches = read_launches(run / "launches.jsonl")
    assert len(launches) == 2 and launches[-1]["config_changes"] == {"train.steps": [4, 8]}
    assert launches[-1]["torn_previous_record"].startswith('{"time": "2026-12-02T08:00:00+0000"')
    assert effective_config(run)["train"]["steps"] == 8 == steps(run)[-1]


def test_a_damaged_line_inside_launches_is_refused_naming_the_file(micro_config):
    run = train(micro_config(out="run"))
    train(micro_config(out="run"))  # a second record
    lines = (run / "launches.jsonl").read_text().splitlines()
    (run / "launches.jsonl").write_text("\n".join(["garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"launches.jsonl: line 1 is not JSON"):
        train(micro_config(out="run"))


def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")  # naming no file, as a write error does


def test_exit_code_passes_a_commands_own_code_through_and_a_traceback_when_asked(monkeypatch, capsys):
    assert exit_code(lambda: None) == 0 and exit_code(lambda: 4) == 4
    assert exit_code(lambda: open("/nonexistent/file")) == 2
    assert capsys.readouterr().err == "error: [Errno 2] No such file or directory: '/nonexistent/file'\n"
    assert exit_code(disk_full) == 2
    assert capsys.readouterr().err == (
        "error: no space left on the device (ENOSPC); free space and run the same command again\n"
    )
    monkeypatch.setenv("AURORA_BENCH_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        exit_code(lambda: open("/nonexistent/file"))


def test_a_full_disk_outside_a_save_is_one_line_naming_enospc_and_the_file(micro_config, monkeypatch, capsys):
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = micro_config(out="run")
    code, line = failed_launch(cfg, capsys)
    assert code == 2
    assert line == (
        f"error: no space left on the device (ENOSPC) while writing {cfg['out_dir']}/metrics.jsonl; "
        "free space and run the same command again"
    )


def fill(disk: Path) -> Path:
    """Fill a filesystem up; returns the file that does it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_really_full_disk_while_a_launch_is_recorded_is_one_line_and_the_next_launch_counts(
    micro_config, tmp_path, capsys
):
    disk = tmp_path / "disk"
    if not tiny_filesystem(disk, "4m"):
        pytest.skip("this machine cannot mount a tmpfs (needs root); torn records are also tested by writing one")
    try:
        run = train(micro_config("train.steps=4", "train.decay_frac=0", out=str(disk / "run")))
        filler = fill(disk)  # launches.jsonl has the rest of its last page: less than a launch record
        code, line = failed_launch(micro_config("train.steps=8", "train.decay_frac=0", out=str(disk / "run")), capsys)
        assert code == 2
        assert line == (
            f"error: no space left on the device (ENOSPC) while writing {run}/launches.jsonl; "
            "free space and run the same command again"
        )
        filler.unlink()
        train(micro_config("train.steps=8", "train.decay_frac=0", out=str(disk / "run")))
        [first, last] = read_launches(run / "launches.jsonl")
        assert last["config_changes"] == {"train.steps": [4, 8]} and last["torn_previous_record"].startswith('{"time"')
        assert effective_config(run)["train"]["steps"] == 8 == steps(run)[-1]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_metrics_cut_inside_the_steps_a_checkpoint_covers_are_logged_again_from_an_earlier_checkpoint(
    micro_config, capsys
):
    full = train(micro_config(out="full"))
    cut = full.parent / "cut"
    shutil.copytree(full, cut)
    # Step 12's record, with its val loss, torn: the checkpoint of step 12 covers a step metrics.jsonl lacks.
    (cut / "metrics.jsonl").write_bytes((full / "metrics.jsonl").read_bytes()[:-60])
    resumed = train(micro_config(out="cut"))
    assert "passed over checkpoint step_0000012: metrics.jsonl has no record of step 12" in capsys.readouterr().out

    def curve(run):
        return [(r["step"], r["train_loss"], r.get("val_loss")) for r in read_metrics(run)]

    assert curve(resumed) == curve(full)


def test_shards_manifests_and_eval_results_are_fsynced_with_their_directory(tmp_path, monkeypatch):
    from eval.hellaswag import write_result

    synced = set()
    real_fsync = os.fsync

    def fsync(fd):
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    written = [
        write_shard(tmp_path / "x_train_000001.bin", np.arange(100)),
        write_manifest(tmp_path, "gpt2", "a test"),
        write_result(tmp_path / "run", {"step": 1}),
    ]
    for path in written:
        assert path.stat().st_ino in synced and path.parent.stat().st_ino in synced, path


def test_an_appended_line_is_fsynced_and_so_is_the_directory_of_a_file_it_creates(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "launches.jsonl"
    append_durably(path, '{"launch": 1}\n')
    assert synced == [path.stat().st_ino, tmp_path.stat().st_ino]
    append_durably(path, '{"launch": 2}\n')
    assert synced[2:] == [path.stat().st_ino] and [line.value for line in read_jsonl(path)[0]] == [
        {"launch": 1},
        {"launch": 2},
    ]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes, but the lock (each launch writes its holder there)."""
    files = (p for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


# Each makes a launch into the run refused: (its overrides, what its error line says).


def change_the_lr(run: Path, shards: Path) -> tuple[list[str], str]:
    return ["optim.matrix.lr=0.5"], "optim.matrix.lr: 0.004 -> 0.5"


def change_the_seed_with_config_yaml_deleted(run: Path, shards: Path) -> tuple[list[str], str]:
    (run / "config.yaml").unlink()
    return ["seed=3"], "seed: 0 -> 3"  # by the checkpoint's config, not by the loader after the launch is recorded


def point_to_other_shards(run: Path, shards: Path) -> tuple[list[str], str]:
    other = run.parent / "other"
    other.mkdir()
    shutil.copy(shards / "micro_val_000000.bin", other)
    shutil.copy(shards / "micro_train_000001.bin", other)  # one of the two train shards: another stream
    return [f"data.dir={other}"], "cannot resume the data loader: the saved position is for n_windows="


def cut_train_steps_below_the_checkpoint(run: Path, shards: Path) -> tuple[list[str], str]:
    return ["train.steps=3"], "train.steps=3 is below step 4"


def damage_a_line_inside_metrics(run: Path, shards: Path) -> tuple[list[str], str]:
    metrics = run / "metrics.jsonl"
    metrics.write_text("garbage\n" + metrics.read_text())
    return [], "metrics.jsonl: line 1 is not JSON"


REFUSALS = [
    change_the_lr,
    change_the_seed_with_config_yaml_deleted,
    point_to_other_shards,
    cut_train_steps_below_the_checkpoint,
    damage_a_line_inside_metrics,
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda refusal: refusal.__name__)
def test_a_refused_launch_changes_nothing_in_the_run_directory(micro_shards, micro_config, capsys, refusal):
    run = train(micro_config(out="run"))
    shutil.rmtree(run / "checkpoints" / "step_0000012")
    damage(run / "checkpoints" / "step_0000008", "truncate")  # a launch would pass it over and set it aside
    overrides, says = refusal(run, micro_shards)
    before = snapshot(run)
    code, line = failed_launch(micro_config(*overrides, out="run"), capsys)
    assert code == 2 and line.startswith("error: ") and says in line, line
    assert snapshot(run) == before


def test_a_deleted_config_yaml_is_restored_from_the_checkpoint_and_still_guards_the_run(micro_config, capsys):
    run = train(micro_config(out="run"))
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    with pytest.raises(RunDirError, match=r"changed: optim.matrix.lr: 0.004 -> 0.5, train.batch_tokens: 512 -> 1024"):
        train(micro_config("optim.matrix.lr=0.5", "train.batch_tokens=1024", "train.steps=14", out="run"))
    assert not (run / "config.yaml").exists()
    train(micro_config(out="run"))
    assert "config.yaml was missing: restored it from the config of checkpoint step_0000012" in capsys.readouterr().out
    assert (run / "config.yaml").read_text() == original
    assert read_launches(run / "launches.jsonl")[-1]["config_restored"] is True


def test_a_run_with_launches_but_no_config_yaml_nor_checkpoint_is_refused(micro_config):
    run = train(micro_config(out="run"))
    (run / "config.yaml").unlink()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunDirError, match=r"has no config.yaml and no intact checkpoint holding the run's config"):
        train(micro_config(out="run"))
    assert not (run / "config.yaml").exists()


def test_a_moved_run_directory_keeps_its_wandb_id(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run_id = wandb_run_id(run)
    # The id a run had before ids were kept: an old run keeps it.
    assert run_id == hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:16]
    shutil.move(run, tmp_path / "moved")
    assert wandb_run_id(tmp_path / "moved") == run_id
