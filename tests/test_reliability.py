"""Faults injected into training: signals, damaged checkpoints, a full disk, divergence, a second
launch, an extended run, bad shards, a torn metrics line. Each test names the guarantee it
checks (docs/guarantees.md lists them): never more lost than the steps since the last
checkpoint, never damaged state loaded silently, one clear line and a non-zero exit."""

from __future__ import annotations

import errno
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
from pathlib import Path

import numpy as np
import pytest
import torch

from model import GPT
from tests.conftest import micro_overrides
from train.checkpoint import CHECKSUMS, CheckpointError, checkpoint_problem, list_checkpoints
from train.cli import Diverged
from train.data import DataError, write_shard
from train.loop import train
from train.metrics import read_metrics
from train.rundir import RunDir, RunDirError, read_launches

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
    job = subprocess.Popen([sys.executable, "-m", "train", *overrides], cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True)
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


def test_a_second_signal_aborts_at_once(micro_shards, tmp_path):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'run'}", *LONG)
    job = subprocess.Popen([sys.executable, "-m", "train", *overrides], cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True)
    wait_for_steps(tmp_path / "run", 5)
    job.send_signal(signal.SIGINT)
    time.sleep(1.5)  # signals within a second of the first are the same request
    if job.poll() is None:
        job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode in (75, 128 + signal.SIGINT)  # stopped cleanly if the first one was faster
    if job.returncode != 75:
        assert "SIGINT again: aborting now" in err


def test_two_ranks_stop_at_the_same_step_when_torchrun_is_sent_sigterm(micro_shards, micro_config, tmp_path):
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path / 'ranks'}", *LONG)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train", *overrides]
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
def test_a_damaged_newest_checkpoint_is_named_set_aside_and_the_run_falls_back_to_the_previous(micro_config, how, capsys):
    full = train(micro_config(out="full"))
    crashed = full.parent / "crashed"
    shutil.copytree(full, crashed)
    damage(crashed / "checkpoints" / "step_0000012", how)
    assert checkpoint_problem(crashed / "checkpoints" / "step_0000012").startswith("__0_0.distcp is")
    resumed = train(micro_config(out="crashed"))
    printed = capsys.readouterr().out
    assert "passed over damaged checkpoint step_0000012" in printed and "resuming" in printed and "step 8" in printed
    assert losses(resumed) == losses(full)  # retrained steps 9-12 bit-exactly
    assert (crashed / "checkpoints" / "step_0000012.damaged").is_dir()  # kept, not deleted
    launch = read_launches(crashed / "launches.jsonl")[-1]
    assert launch["resumed_from"] == "step_0000008" and launch["damaged_checkpoints_passed_over"][0].startswith("step_0000012")


def test_a_checkpoint_without_checksums_is_incomplete_and_passed_over(micro_config):
    full = train(micro_config(out="full"))
    (full / "checkpoints" / "step_0000012" / CHECKSUMS).unlink()
    assert "no checksums.json" in checkpoint_problem(full / "checkpoints" / "step_0000012")
    assert losses(train(micro_config(out="full"))) == losses(full)


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
    with pytest.raises(CheckpointError, match=r"no space left on the device while writing checkpoint .*step_0000008 \(ENOSPC\)") as err:
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
    with pytest.raises(CheckpointError, match="not enough free space .* run again to resume from step_0000004"):
        train(micro_config("train.steps=8", "train.decay_frac=0", out="run"))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000004"]


def tiny_filesystem(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_really_full_filesystem_stops_with_one_line_and_keeps_the_previous_checkpoint(micro_config, tmp_path):
    disk = tmp_path / "disk"
    if not tiny_filesystem(disk, "2m"):  # room for two of the micro GPT's ~0.7 MB checkpoints
        pytest.skip("this machine cannot mount a tmpfs (needs root); the ENOSPC path is also tested by patching")
    try:
        with pytest.raises(CheckpointError, match="ENOSPC|not enough free space"):
            train(micro_config("train.steps=40", "train.checkpoint_every=4", "train.keep_checkpoints=null", out=str(disk / "run")))
        kept = list_checkpoints(disk / "run" / "checkpoints")
        assert kept and all(checkpoint_problem(p) is None for p in kept)
        assert not [p for p in (disk / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --- divergence ----------------------------------------------------------------------------


MICRO_BATCHES_PER_STEP = 4  # the micro config: 512 tokens a step, micro-batches of 4 x 32


def nan_loss_at(monkeypatch, step: int) -> None:
    """Make the first micro-batch of training step `step` give a NaN loss (and NaN gradients)."""
    real_forward = GPT.forward
    count = [0]

    def forward(self, idx, targets=None):
        out = real_forward(self, idx, targets)
        if targets is not None and self.training:
            count[0] += 1
            if count[0] == (step - 1) * MICRO_BATCHES_PER_STEP + 1:
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def test_divergence_stops_before_the_update_and_saves_nothing_non_finite(micro_config, monkeypatch):
    nan_loss_at(monkeypatch, step=6)
    with pytest.raises(Diverged, match=r"diverged at step 6: train loss nan.* last good checkpoint \(step_0000004\)"):
        train(micro_config(out="run"))
    run = Path(micro_config(out="run")["out_dir"])
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000004"]
    assert steps(run) == [1, 2, 3, 4, 5]


def test_a_budget_of_skipped_steps_skips_the_update_and_counts_it(micro_config, monkeypatch):
    nan_loss_at(monkeypatch, step=6)
    run = train(micro_config("train.max_skipped_steps=1", out="run"))
    records = read_metrics(run)
    assert [r["skipped_steps"] for r in records] == [0] * 5 + [1] * 7
    assert math.isnan(records[5]["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in records[6:])


def test_the_gradient_norm_is_logged_every_step(micro_config):
    records = read_metrics(train(micro_config(out="run")))
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in records)


def test_non_finite_parameters_are_never_checkpointed(micro_config, monkeypatch):
    from train import loop

    real_build = loop.build_optimizer

    def build_optimizer(cfg, model):
        optimizer = real_build(cfg, model)
        real_step, count = optimizer.step, [0]

        def step(self, closure=None):
            real_step(closure)
            count[0] += 1
            if count[0] == 8:  # an update that overflows, on a step a checkpoint follows
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))

        optimizer.step = types.MethodType(step, optimizer)  # bound, as the lr scheduler expects
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build_optimizer)
    with pytest.raises(Diverged, match=r"parameters are not finite after step 8; nothing was saved \(last good checkpoint: step_0000004\)"):
        train(micro_config(out="run"))
    assert [p.name for p in list_checkpoints(Path(micro_config(out="run")["out_dir"]) / "checkpoints")] == ["step_0000004"]


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
    with pytest.raises(RunDirError, match=r"train.steps 8 -> 12 would change the lr schedule of steps already run \(step 6 ran at lr scale 0.75"):
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
    with pytest.raises(DataError, match=r"micro_train_000001.bin holds token id 600 .* outside the model's vocabulary of 512"):
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
    assert [r.get("step") for r in discarded] == [9, 10, 11, 12, None] and discarded[-1]["torn_line"].startswith('{"step": 13')


def test_a_damaged_line_inside_metrics_is_refused_naming_the_file(micro_config):
    full = train(micro_config(out="run"))
    lines = (full / "metrics.jsonl").read_text().splitlines()
    lines[3] = "garbage"
    (full / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(full / "checkpoints" / "step_0000012")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 4 is not JSON"):
        train(micro_config(out="run"))


def test_a_launch_killed_while_saving_leaves_the_previous_checkpoint_and_no_trace(micro_config):
    full = train(micro_config(out="full"))
    killed = full.parent / "killed"
    shutil.copytree(full, killed)
    for name in ("step_0000008", "step_0000012"):
        shutil.rmtree(killed / "checkpoints" / name)
    partial = killed / "checkpoints" / "step_0000008.tmp"  # what a kill mid-write leaves: no checksums, a torn shard
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"\x00" * 1000)
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["step_0000004"]
    assert losses(train(micro_config(out="killed"))) == losses(full)
    assert not partial.exists()
