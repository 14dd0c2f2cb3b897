"""The scripts: the README's main job (scripts/compare_optimizers.py) on a micro GPT, the sweep
driver, and the communication-volume calculator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import micro_overrides

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_optimizers_prints_a_table_and_the_output_paths(micro_shards, tmp_path, capsys):
    compare = load_script("compare_optimizers")
    out = tmp_path / "compare"
    assert compare.main(["--optimizers", "adamw", "muon", "--out", str(out), *micro_overrides(micro_shards)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| adamw") or line.startswith("| muon")]
    assert len(rows) == 2
    assert "seed 0, 12 steps of 512 tokens" in printed
    assert (out / "summary.md").read_text().count("\n| ") == 3  # header + two rows
    for name in ("adamw", "muon"):
        assert str(out / name) in printed and (out / name / "metrics.jsonl").is_file()


def test_compare_optimizers_rejects_an_unknown_optimizer(tmp_path):
    compare = load_script("compare_optimizers")
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--optimizers", "sgd", "--out", str(tmp_path)])
    assert exit_info.value.code == 2


def test_sweep_expands_command_line_sweeps_into_points():
    sweep = load_script("sweep")
    points = sweep.sweep_points(["optim=adamw,muon", "seed=0,1", "train.steps=3"])
    assert sorted(" ".join(p) for p in points) == [
        "optim=adamw seed=0 train.steps=3",
        "optim=adamw seed=1 train.steps=3",
        "optim=muon seed=0 train.steps=3",
        "optim=muon seed=1 train.steps=3",
    ]


def test_sweep_refuses_points_that_share_an_out_dir(capsys):
    sweep = load_script("sweep")
    assert sweep.main(["--dry-run", "optim=adamw,muon", "out_dir=runs/same"]) == 2
    assert "share out_dir 'runs/same'" in capsys.readouterr().err


def test_sweep_launches_one_torchrun_per_point(micro_shards, tmp_path):
    sweep = load_script("sweep")
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path}/seed" + "${seed}", "seed=0,1", "train.steps=2")
    assert sweep.main(["--nproc", "1", *overrides]) == 0
    assert (tmp_path / "seed0" / "metrics.jsonl").is_file() and (tmp_path / "seed1" / "metrics.jsonl").is_file()


def test_comm_volume_prints_the_gathered_bytes_of_the_gpt124m_matrices_per_world_size(capsys):
    assert load_script("comm_volume").main(["--world-sizes", "8", "64"]) == 0
    out = capsys.readouterr().out
    assert "48 of 768x768, 12 of 3072x768, 12 of 768x3072" in out
    # 8 ranks: perfectly balanced, the ideal 7/8 of 340 MB; 64: one 3072x768 fp32 matrix from each of 63 ranks
    assert "| 8 | 297 MB | 297 MB | 1,136 MB | 1.00 |" in out
    assert "| 64 | 595 MB | 334 MB | 1,279 MB | 1.78 |" in out


def test_comm_volume_refuses_an_unknown_model_preset():
    with pytest.raises(ValueError, match="--model must be one of .*'gpt124m'.*got 'gpt2'"):
        load_script("comm_volume").main(["--model", "gpt2"])
