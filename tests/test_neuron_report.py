"""The neuron-death experiment config, its report (eval/neuron_death.py) and the report's command
(scripts/neuron_death_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.neuron_death import neuron_death_report, run_styles
from eval.runs import load_run
from tests.conftest import compose_config
from tests.test_scripts import load_script
from train.config import recipe_sweep
from train.loop import train

PNG_MAGIC = b"\x89PNG"


def write_run(
    path: Path,
    optimizer: str,
    expansion: int,
    last_step: int,
    every: int = 30,
    seed: int = 0,
    matrix_lr: float = 0.02,
    matrix: dict | None = None,
) -> Path:
    """A run directory as the loop writes it, with diagnostics every `every` steps: activation-dead
    fraction (1 + seed)·step/1000, starved fraction step/2000 (once 4 diagnostics exist), leverage
    CV 0.5, both fractions 0 in block 0 and twice the pooled value in block 1, up-projection
    row-norm minima 0.5 and 0.25 in blocks 0 and 1, leverage histograms at
    steps 90 and 480; final val loss 4.25 + seed/100."""
    config = {
        "seed": seed,
        "out_dir": str(path),
        "model": {"name": "tiny", "d_model": 128, "n_layer": 4, "activation": "relu2", "mlp_expansion": expansion},
        "optim": {"name": optimizer, "matrix": {"lr": matrix_lr, **(matrix or {})}},
        "data": {"name": "shakespeare", "val_tokens": 16384},
        "train": {"steps": last_step, "batch_tokens": 1024, "micro_batch": 16, "seq_len": 64},
        "diagnostics": {"every": every, "probe_tokens": 1024, "starvation_window": 4, "histogram_steps": [90, 480]},
    }
    records = []
    for step in range(1, last_step + 1):
        record = {
            "step": step,
            "total_steps": last_step,
            "tokens": 1024 * step,
            "train_loss": 5.0,
            "tokens_per_s": 1000.0,
            "optim_step_ms": 10.0,
            "elapsed_s": float(step),
        }
        if step % every == 0:
            record["diag/mlp.hidden/act_dead_frac"] = (1 + seed) * step / 1000
            record["diag/blocks.0.mlp.hidden/act_dead_frac"] = 0.0
            record["diag/blocks.1.mlp.hidden/act_dead_frac"] = 2 * (1 + seed) * step / 1000
            record["diag/mlp.hidden/act_nearly_dead_frac"] = step / 500
            record["diag/mlp.up/leverage_cv"] = 0.5
            record["diag/blocks.0.mlp.up/weight_row_norm_rel_min"] = 0.5
            record["diag/blocks.1.mlp.up/weight_row_norm_rel_min"] = 0.25
            record["diag/blocks.1.mlp.down/weight_row_norm_rel_min"] = 0.125  # not an up-projection
            if step >= 4 * every:
                record["diag/mlp.up/starved_frac"] = step / 2000
                record["diag/blocks.0.mlp.up/starved_frac"] = 0.0
                record["diag/blocks.1.mlp.up/starved_frac"] = step / 1000
            if step in (90, 480):
                record["diag/mlp.up/leverage_hist"] = [0] * 9 + [3, 10] + [0] * 9
        if step == last_step:
            record["val_loss"] = 4.25 + seed / 100
        records.append(record)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def table_rows(report: str) -> list[list[str]]:
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| optimizer")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_report_reads_values_at_the_nearest_diagnostic_step_and_draws_both_plots(tmp_path, capsys):
    report = load_script("neuron_death_report")
    long_run = write_run(tmp_path / "muon-x8", "muon", 8, last_step=510)
    short_run = write_run(tmp_path / "aurora-x8", "aurora", 8, last_step=60)
    out = tmp_path / "report"
    assert report.main([str(long_run), str(short_run), "--out", str(out)]) == 0

    text = (out / "neuron_death.md").read_text()
    assert text in capsys.readouterr().out
    muon, aurora = (row for row in table_rows(text) if row[0] in ("muon", "aurora"))
    header = [
        "optimizer",
        "MLP ×",
        "seed",
        "steps",
        "dead @100",
        "dead @500",
        "dead @end",
        "nearly dead @end",
        "starved @100",
        "starved @500",
        "starved @end",
        "starved down @end",
        "leverage CV @end",
        "dead worst block @end",
        "starved worst block @end",
        "up row norm min @end",
        "final val loss",
        "tokens/s",
    ]
    assert dict(zip(header, muon)) == {
        "optimizer": "muon",
        "MLP ×": "8",
        "seed": "0",
        "steps": "510",
        "dead @100": "0.090 (@90)",
        "dead @500": "0.510 (@510)",
        "dead @end": "0.510",
        "nearly dead @end": "1.020",
        "starved @100": "0.060 (@120)",
        "starved @500": "0.255 (@510)",
        "starved @end": "0.255",
        "starved down @end": "-",
        "leverage CV @end": "0.500",
        "dead worst block @end": "1.020",
        "starved worst block @end": "0.510",
        "up row norm min @end": "0.250",
        "final val loss": "4.2500",
        "tokens/s": "1,000",
    }  # starved is first logged at 120, when the window fills; starved down is never logged
    assert aurora[4:7] == ["-", "-", "0.060"]  # the run ended before steps 100 and 500
    assert "seeds 0" in text and "{60, 510} steps of 1024 tokens" in text and "every 30 steps" in text
    assert "Over seeds" not in text  # no two runs differ only in their seed
    for plot in ("death_vs_step.png", "leverage_hist.png"):
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)


def test_report_names_the_settings_that_set_runs_apart_and_averages_runs_that_differ_only_in_seed(tmp_path):
    runs = [
        write_run(tmp_path / "muon-seed0", "muon", 8, last_step=120),
        write_run(tmp_path / "muon-seed1", "muon", 8, last_step=120, seed=1),
        write_run(tmp_path / "muon-lr0.1-seed0", "muon", 8, last_step=120, matrix_lr=0.1),
        write_run(tmp_path / "adamw-seed0", "adamw", 8, last_step=120, matrix_lr=0.001),  # another optimizer's own lr
    ]
    out = tmp_path / "report"
    text, _ = neuron_death_report(runs, out)

    assert text == (out / "neuron_death.md").read_text()
    assert "- settings that differ between runs of one optimizer (the settings column): optim.matrix.lr\n" in text
    per_run, over_seeds = (table_rows(part) for part in text.split("Over seeds"))
    assert [row[:4] for row in per_run] == [
        ["adamw", "8", "lr=0.001", "0"],
        ["muon", "8", "lr=0.02", "0"],
        ["muon", "8", "lr=0.02", "1"],
        ["muon", "8", "lr=0.1", "0"],
    ]
    assert over_seeds[1] == [
        "muon",
        "8",
        "lr=0.02",
        "120",
        "0, 1",
        "0.180 (0.120–0.240)",
        "0.240",
        "0.060",
        "0.500",
        "0.360 (0.240–0.480)",
        "0.120",
        "4.2550 (4.2500–4.2600)",
    ]
    assert over_seeds[2][4:6] == ["0", "0.120"]  # a group of one seed: its value, no range


def test_a_run_from_before_an_optimizer_option_existed_counts_as_that_option_at_its_default(tmp_path):
    new_options = {"pp_row_floor": 0.0, "recycle_after": 0, "recycle_below": 0.0}
    runs = [
        write_run(tmp_path / "aurora-seed0", "aurora", 16, last_step=120),  # made before the options
        write_run(tmp_path / "aurora-seed1", "aurora", 16, last_step=120, seed=1, matrix=new_options),
        write_run(tmp_path / "recycle-seed0", "aurora", 16, last_step=120, matrix={**new_options, "recycle_after": 20}),
        write_run(tmp_path / "muon-seed0", "muon", 16, last_step=120),  # no Aurora options to default
    ]
    out = tmp_path / "report"
    neuron_death_report(runs, out)

    over_seeds = table_rows((out / "neuron_death.md").read_text().split("Over seeds")[1])
    assert [row[:5] for row in over_seeds] == [
        ["muon", "16", "", "120", "0"],  # muon's runs do not differ: no setting to name
        ["aurora", "16", "recycle_after=0", "120", "0, 1"],
        ["aurora", "16", "recycle_after=20", "120", "0"],
    ]


def test_report_works_on_two_tiny_run_directories_made_by_the_training_loop(micro_config, tmp_path):
    diagnostics = (
        "experiment=neuron_death",
        "diagnostics.every=4",
        "diagnostics.probe_tokens=256",
        "diagnostics.histogram_steps=[4,8]",
    )
    runs = [train(micro_config(f"optim={name}", *diagnostics, out=name)) for name in ("adamw", "aurora")]
    out = tmp_path / "report"
    neuron_death_report(runs, out)
    rows = table_rows((out / "neuron_death.md").read_text())
    assert [row[:4] for row in rows] == [["adamw", "4", "0", "12"], ["aurora", "4", "0", "12"]]
    for run, row in zip(runs, rows):
        assert row[-2] == f"{load_run(run).final_val_loss:.4f}"


def test_report_refuses_a_directory_that_holds_no_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no run directories"):
        neuron_death_report([tmp_path / "empty"], tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_report_lists_a_run_without_metrics_instead_of_failing(tmp_path):
    done = write_run(tmp_path / "runs" / "muon-x8", "muon", 8, last_step=60)
    (tmp_path / "runs" / "aurora-x8" / "checkpoints").mkdir(parents=True)  # launched, never logged
    neuron_death_report([tmp_path / "runs"], tmp_path / "report")
    text = (tmp_path / "report" / "neuron_death.md").read_text()
    assert [row[0] for row in table_rows(text)] == ["muon"] and str(done) not in text.split("Runs with missing")[-1]
    assert f"{tmp_path / 'runs' / 'aurora-x8'}: no config.yaml; no metrics.jsonl" in text


def test_neuron_death_experiment_sweeps_five_optimizers_by_three_expansions_for_500_steps():
    sweep = recipe_sweep(["experiment=neuron_death"])
    assert sweep["optim"].split(",") == ["adamw", "muon", "normuon", "unormuon", "aurora"]
    assert sweep["model.mlp_expansion"].split(",") == ["4", "8", "16"]
    cfg = compose_config("experiment=neuron_death", "optim=normuon", "model.mlp_expansion=16", "seed=3")
    assert cfg["out_dir"] == "runs/neuron_death/normuon-x16-seed3"
    assert cfg["train"]["steps"] >= 500 and cfg["train"]["batch_tokens"] == 16 * 64
    assert cfg["diagnostics"]["every"] > 0 and cfg["diagnostics"]["histogram_steps"] == [100, 500]


def test_plot_styles_tell_apart_the_runs_of_one_panel_and_repeat_across_panels(tmp_path):
    runs = [
        load_run(write_run(tmp_path / f"muon-x{expansion}-seed{seed}", "muon", expansion, last_step=60, seed=seed))
        for expansion in (4, 8)
        for seed in (0, 1)
    ]
    styles = run_styles(runs)
    by_name = {run.path.name: styles[run.path] for run in runs}
    assert by_name["muon-x4-seed0"] != by_name["muon-x4-seed1"]  # one panel: two looks
    assert by_name["muon-x4-seed0"] == by_name["muon-x8-seed0"]  # seed 0 looks the same in every panel
