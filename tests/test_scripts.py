"""The scripts: the README's main job (scripts/compare_optimizers.py) on a micro GPT, the sweep
driver, the communication-volume calculator and the optimizer step-time benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import micro_overrides
from train.cli import exit_code
from train.config import sweep_points
from train.sweep import with_threads

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_job_at_a_cut_down_size_writes_its_table_figure_samples_and_paths(micro_shards, tmp_path, capsys):
    compare = load_script("compare_optimizers")
    out = tmp_path / "compare"
    argv = [
        "--optimizers",
        "adamw",
        "muon",
        "--seeds",
        "0",
        "1",
        "--jobs",
        "2",
        "--sample-tokens",
        "12",
        "--out",
        str(out),
    ]
    overrides = micro_overrides(micro_shards, "diagnostics.every=4", "diagnostics.probe_tokens=256")
    assert compare.main([*argv, *overrides]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert report in printed
    rows = [line for line in report.splitlines() if line.startswith(("| adamw", "| muon"))]
    assert len(rows) == 2 and all("2/2" in row for row in rows)  # both seeds pooled in each row
    assert "exactly dead" in report and "starved up rows" in report and "seeds 0, 1, 12 steps of 512 tokens" in report
    assert "Lowest final val loss" in report and report.count("### ") == 2  # findings, and a sample per optimizer
    # The machine's CPU features and each optimizer's polar dtype (fp32 on a CPU): why a run is slow.
    assert "AVX2" in report and "polar iteration dtype: adamw none, muon float32" in report
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("adamw-seed0", "adamw-seed1", "muon-seed0", "muon-seed1"):
        assert str(out / name) in printed and (out / name / "metrics.jsonl").is_file()
    assert "ETA" in printed or "sweep: 4 runs" in printed
    assert compare.main([*argv, *overrides]) == 0  # a rerun skips the finished runs and reports again
    assert "4 already done and skipped" in capsys.readouterr().out


def test_compare_optimizers_rejects_an_unknown_optimizer(tmp_path):
    compare = load_script("compare_optimizers")
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--optimizers", "sgd", "--out", str(tmp_path)])
    assert exit_info.value.code == 2


def test_sweep_expands_command_line_sweeps_into_points():
    points = sweep_points(["optim=adamw,muon", "seed=0,1", "train.steps=3"])
    assert sorted(" ".join(p) for p in points) == [
        "optim=adamw seed=0 train.steps=3",
        "optim=adamw seed=1 train.steps=3",
        "optim=muon seed=0 train.steps=3",
        "optim=muon seed=1 train.steps=3",
    ]


def test_sweep_refuses_points_that_share_an_out_dir(capsys):
    sweep = load_script("sweep")
    assert exit_code(lambda: sweep.main(["--dry-run", "optim=adamw,muon", "out_dir=runs/same"])) == 2
    assert "share out_dir 'runs/same'" in capsys.readouterr().err


def test_the_main_job_tuning_and_a_sweep_give_two_configs_of_one_optimizer_a_run_directory_each(tmp_path, capsys):
    from eval.main_job import MainJob
    from eval.tuning import Tuning
    from train.config import compose_sweep

    job = MainJob(["aurora", "aurora_wide"], [0], "quickstart", tmp_path, jobs=1, sample_tokens=0, overrides=[])
    configs = [cfg for _, cfg in compose_sweep(job.sweep_overrides())]
    assert [cfg["out_dir"] for cfg in configs] == [f"{tmp_path}/aurora-seed0", f"{tmp_path}/aurora_wide-seed0"]
    assert [cfg["optim"]["name"] for cfg in configs] == ["aurora", "aurora"]  # one class, two configs
    tuning = Tuning(["aurora", "aurora_wide"], 1, 1, 0, "sobol", 0, jobs=1, nproc=1, out=tmp_path, overrides=[])
    finals = [tuning.points(option, "final", {}, [1])[0].out_dir for option in ("aurora", "aurora_wide")]
    assert finals == [tmp_path / "final" / "aurora-seed1", tmp_path / "final" / "aurora_wide-seed1"]
    sweep = load_script("sweep")
    assert exit_code(lambda: sweep.main(["--dry-run", "optim=aurora,aurora_wide"])) == 0, capsys.readouterr().err


def test_sweep_dry_run_checks_every_point_value_included(capsys):
    sweep = load_script("sweep")
    assert exit_code(lambda: sweep.main(["--dry-run", "optim=muon", "optim.matrix.ns_method=quintic,bogus"])) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: sweep point 2 of 2 (optim=muon optim.matrix.ns_method=bogus): ns_method must be one of"
    )


def test_jobs_share_the_cores_unless_the_overrides_set_the_threads_with_or_without_a_plus(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert with_threads(["seed=0"], 2) == ["seed=0", "train.threads=4"]
    assert with_threads(["seed=0"], 16) == ["seed=0", "train.threads=1"]
    assert with_threads(["seed=0"], 1) == ["seed=0"]
    for own in ("train.threads=3", "+train.threads=3"):
        assert with_threads([own], 2) == [own]


def test_sweep_writes_an_index_and_a_relaunch_skips_finished_runs(micro_shards, tmp_path, capsys):
    sweep = load_script("sweep")
    overrides = micro_overrides(micro_shards, f"out_dir={tmp_path}/sweep/seed" + "${seed}", "seed=0,1", "train.steps=2")
    assert sweep.main(["--jobs", "2", *overrides]) == 0
    index = json.loads((tmp_path / "sweep" / "sweep_index.json").read_text())
    assert {name: run["status"] for name, run in index["runs"].items()} == {"seed0": "done", "seed1": "done"}
    assert index["runs"]["seed1"]["overrides"][-1] == "seed=1"
    printed = capsys.readouterr().out
    assert "=== sweep point 2/2" in printed and "sweep summary (2 runs)" in printed
    metrics = (tmp_path / "sweep" / "seed0" / "metrics.jsonl").read_text()
    assert sweep.main(["--jobs", "2", *overrides]) == 0
    assert "2 already done and skipped" in capsys.readouterr().out
    assert (tmp_path / "sweep" / "seed0" / "metrics.jsonl").read_text() == metrics
    assert len(json.loads((tmp_path / "sweep" / "sweep_index.json").read_text())["launches"]) == 2


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


def test_bench_optim_times_the_chosen_cases_in_order_against_the_first(capsys):
    bench = load_script("bench_optim")
    results = bench.step_time_table(
        torch.device("cpu"), 2, warm_up=False, cases=["aurora tall K=2", "aurora recycling"], shape="tiny_x16"
    )
    assert list(results) == ["aurora tall K=2", "aurora recycling K=2"]
    out = capsys.readouterr().out
    assert (
        "tiny_x16 parameter set (2,453,568 parameters)" in out and "| / aurora tall K=2 (median over rounds) |" in out
    )
    assert f"| aurora tall K=2 | {results['aurora tall K=2']:.3f} | 1.000 |" in out  # the reference against itself


def test_bench_optim_reads_the_tall_momentum_matrices_of_a_checkpoint(micro_config):
    from optim import build_optimizer
    from train.checkpoint import list_checkpoints, load_checkpoint, load_model
    from train.loop import train

    checkpoint = list_checkpoints(train(micro_config("optim=aurora")) / "checkpoints")[-1]
    momenta = load_script("bench_optim").checkpoint_momenta(checkpoint)
    assert [name for name, _ in momenta] == ["blocks.0.mlp.up.weight", "blocks.1.mlp.up.weight"]
    model, cfg = load_model(checkpoint)
    optimizer = build_optimizer(cfg["optim"], model)
    load_checkpoint(checkpoint, model, optimizer, cfg["data"]["tokenizer"])
    parameters = dict(model.named_parameters())
    for name, momentum in momenta:
        assert torch.equal(momentum, optimizer.state[parameters[name]]["momentum_buffer"])
