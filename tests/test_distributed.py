"""torchrun with 2 gloo ranks on CPU against the single-process run.

Tolerance: 2 ranks sum their gradients in another order than one process that
accumulates 4 micro-batches, so losses agree to float32 rounding, amplified a
little by bf16 Newton-Schulz iterations: relative 5e-5 over 12 steps (seen: 5e-6).
The neuron diagnostics of the same runs agree too (tolerance at the comparison).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_config, micro_overrides
from train.checkpoint import list_checkpoints
from train.loop import train
from train.metrics import read_metrics
from train.sweep import train_argv

REPO = Path(__file__).resolve().parent.parent
RTOL = 5e-5


def torchrun_command(*overrides: str, nproc: int = 2) -> list[str]:
    return train_argv(overrides, nproc)


def torch_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*overrides: str) -> None:
    done = subprocess.run(
        torchrun_command(*overrides), cwd=REPO, env=torch_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def config(shards: Path, out: Path, *extra: str) -> dict:
    return compose_config(*micro_overrides(shards, f"out_dir={out}", *extra))


def curve(run_dir: Path, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run_dir) if key in r]


def assert_same_curves(run_dir: Path, reference: Path) -> None:
    for key in ("train_loss", "val_loss"):
        assert curve(run_dir, key) == pytest.approx(curve(reference, key), rel=RTOL), key


DIAGNOSTICS = (
    "diagnostics.every=4",
    "diagnostics.probe_tokens=256",
    "diagnostics.starvation_window=2",
    "diagnostics.histogram_steps=[8]",
)
# A float32 Newton-Schulz iteration: in bf16 the float32-level differences of the gradients
# flip roundings, and the leverage of a nearly rank-deficient early update moves by 30%.
NS_FP32 = "optim.matrix.ns_dtype=float32"
NEEDS_FIELD = pytest.mark.skipif(
    importlib.util.find_spec("pytorch_optimizer") is None, reason="the optimizers extra: pip install -e '.[optimizers]'"
)


def diagnostic_records(run_dir: Path) -> dict[int, dict]:
    """{step: its diag/... metrics} for every step with a diagnostic."""
    records = (r for r in read_metrics(run_dir) if "diag/mlp.up/leverage_cv" in r)
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("diag/")} for r in records}


@pytest.mark.parametrize(
    "parallelism, optimizer, extra",
    [
        pytest.param("ddp", "aurora", (NS_FP32,), id="ddp-aurora"),
        pytest.param("fsdp2", "muon", (NS_FP32,), id="fsdp2-muon"),
        # a plug-in: its updates are the parameter changes, gathered whole from the shards
        pytest.param("fsdp2", "schedulefree_adamw", (), marks=NEEDS_FIELD, id="fsdp2-schedulefree_adamw"),
    ],
)
def test_two_ranks_reproduce_the_single_process_loss_curve_and_neuron_diagnostics(
    micro_shards, tmp_path, parallelism, optimizer, extra
):
    single = train(config(micro_shards, tmp_path / "single", f"optim={optimizer}", *extra, *DIAGNOSTICS))
    torchrun(
        *micro_overrides(
            micro_shards,
            f"out_dir={tmp_path / 'ranks'}",
            f"optim={optimizer}",
            f"train.parallelism={parallelism}",
            *extra,
            *DIAGNOSTICS,
        )
    )
    assert_same_curves(tmp_path / "ranks", single)
    expected, got = diagnostic_records(single), diagnostic_records(tmp_path / "ranks")
    assert sorted(expected) == sorted(got) == [4, 8, 12]
    for step, metrics in expected.items():
        assert got[step].keys() == metrics.keys(), step
        for key, value in metrics.items():
            if isinstance(value, list):  # a histogram
                # A square matrix's update has every leverage within 1e-3 of 1.0, a bin edge, so
                # rounding decides the bin; the MLP matrices' spread-out leverages must agree.
                if "mlp." in key:
                    assert got[step][key] == value, (step, key)
            else:
                assert got[step][key] == pytest.approx(value, rel=1e-3, abs=1e-6), (step, key)


def test_fsdp2_checkpoint_from_two_ranks_resumes_on_one_process(micro_shards, tmp_path):
    torchrun(*micro_overrides(micro_shards, f"out_dir={tmp_path / 'full'}", "optim=aurora", "train.parallelism=fsdp2"))
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    for path in list_checkpoints(crashed / "checkpoints")[1:]:
        shutil.rmtree(path)
    resumed = train(config(micro_shards, crashed, "optim=aurora", "train.parallelism=fsdp2"))
    assert_same_curves(resumed, tmp_path / "full")


def environment(pid: str) -> dict[bytes, bytes]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.split(b"=", 1) for entry in entries if b"=" in entry)


def test_a_killed_rank_ends_the_job_with_an_error_naming_it(micro_shards, tmp_path):
    overrides = micro_overrides(
        micro_shards, f"out_dir={tmp_path / 'run'}", "train.steps=100000", "train.checkpoint_every=0"
    )
    job = subprocess.Popen(
        torchrun_command(*overrides),
        cwd=REPO,
        env=torch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank_one = [pid for pid in workers if environment(pid).get(b"RANK") == b"1"]
    assert len(workers) == 2 and len(rank_one) == 1, workers
    os.kill(int(rank_one[0]), signal.SIGKILL)
    started = time.monotonic()
    output, _ = job.communicate(timeout=90)
    assert job.returncode != 0
    assert time.monotonic() - started < 60
    assert "rank: 1" in output and "Signal 9 (SIGKILL)" in output


def test_hydra_multirun_inside_one_torchrun_runs_every_point(micro_shards, tmp_path):
    torchrun("-m", *micro_overrides(micro_shards, f"out_dir={tmp_path}/seed" + "${seed}", "seed=0,1", "train.steps=2"))
    first, second = (curve(tmp_path / f"seed{s}", "train_loss") for s in (0, 1))
    assert len(first) == len(second) == 2 and first != second


def test_every_rank_leaves_its_process_group_before_interpreter_teardown(tmp_path):
    # Registered before init_runtime, so it runs after init_runtime's exit hook (atexit is LIFO).
    script = tmp_path / "join.py"
    script.write_text(
        "import atexit\n"
        "import torch.distributed as dist\n"
        "from train.dist import init_runtime\n"
        "atexit.register(lambda: print('still in the group' if dist.is_initialized() else 'left the group'))\n"
        "init_runtime('cpu')\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(
        command, cwd=REPO, env=torch_env() | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n").count("left the group") == 2, done.stdout
