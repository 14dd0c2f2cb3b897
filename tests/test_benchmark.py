"""The benchmark protocol: the track's fixed setting and what it refuses, a record from seeds,
equal-budget tuning, the comparison report (also over missing and unfinished runs), W&B grouping."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eval.comparison import comparison_report
from tests.conftest import compose_config, micro_overrides
from tests.test_scripts import load_script
from train.cli import exit_code
from train.config import ConfigError, check_config
from train.loop import train
from train.sweep import logged_steps

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG"


def test_speedrun_track3_config_carries_the_tracks_numbers():
    done = subprocess.run(
        [sys.executable, "-m", "train", "experiment=speedrun_track3", "--cfg", "job", "--resolve"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert (cfg["model"]["n_layer"], cfg["model"]["d_model"], cfg["model"]["n_head"], cfg["model"]["vocab_size"]) == (
        12,
        768,
        6,
        50304,
    )
    train_cfg = cfg["train"]
    assert (train_cfg["batch_tokens"], train_cfg["seq_len"], train_cfg["steps"]) == (524288, 1024, 3250)
    assert (train_cfg["val_every"], train_cfg["val_every_late"], train_cfg["val_late_frac"]) == (125, 25, 0.1)
    assert cfg["data"]["name"] == "fineweb10b" and cfg["data"]["val_tokens"] == 10_485_760
    assert cfg["protocol"] == {"name": "speedrun_track3", "target": 3.28, "unofficial": False}


def test_the_protocol_refuses_a_changed_setting_unless_unofficial():
    with pytest.raises(
        ConfigError,
        match=r"experiment=speedrun_track3 fixes .* changed: "
        r"train.batch_tokens: 524288 -> 262144, train.seq_len: 1024 -> 512",
    ):
        check_config(compose_config("experiment=speedrun_track3", "train.seq_len=512", "train.batch_tokens=262144"))
    check_config(compose_config("experiment=speedrun_track3", "train.seq_len=512", "protocol.unofficial=true"))
    # free: the optimizer and its config, the lr schedule, the seed, how and where it runs
    check_config(
        compose_config(
            "experiment=speedrun_track3",
            "optim=aurora_track3",
            "optim.matrix.lr=0.03",
            "train.steps=3000",
            "train.decay_frac=0.5",
            "seed=7",
            "train.micro_batch=16",
            "data.dir=/elsewhere",
        )
    )


def test_the_cli_refuses_it_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "train", "experiment=speedrun_track3", "model.mlp_expansion=8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "model.mlp_expansion: 4.0 -> 8" in done.stderr and "protocol.unofficial=true" in done.stderr


def test_validation_runs_every_n_steps_and_more_often_at_the_end():
    from train.schedule import validation_due

    cfg = {"steps": 100, "val_every": 25, "val_every_late": 5, "val_late_frac": 0.1}
    assert [s for s in range(1, 101) if validation_due(s, cfg)] == [25, 50, 75, 95, 100]


@pytest.mark.parametrize(
    "name, steps, claim",
    [("aurora_track3", 3175, "3.27885"), ("aurora_wide_track3", 2930, "3.27844"), ("normuon_track3", 3250, "3.2789")],
)
def test_published_track_settings_state_their_source_and_claim(name, steps, claim):
    cfg = compose_config("experiment=speedrun_track3", f"optim={name}")
    check_config(cfg)
    assert f"{steps} steps" in cfg["optim"]["source"] and claim in cfg["optim"]["source"]
    assert "not included" in cfg["optim"]["source"] or name == "normuon_track3"


def test_a_two_seed_speedrun_tiny_writes_its_record(tmp_path, capsys):
    speedrun = load_script("speedrun")
    argv = [
        "--seeds",
        "0",
        "1",
        "--record",
        str(tmp_path / "record"),
        "--",
        "experiment=speedrun_tiny",
        "train.steps=12",
        f"out_dir={tmp_path}/runs/" + "${optim.name}-seed${seed}",
    ]
    assert speedrun.main(argv) == 0
    printed = capsys.readouterr().out
    readme = (tmp_path / "record" / "README.md").read_text()
    # 12 steps cannot reach 1.80
    assert "speedrun_tiny (official), muon, 12 steps, 2 of 2 seeds finished: FAIL: no validated step" in printed
    assert "**Verdict: FAIL**" in readme and "**Official**" in readme and "(target − mean)·√n" in readme
    seeds = [line for line in readme.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(seeds) == 2 and all("2 CPUs" in line or "CPUs" in line for line in seeds)
    for seed in (0, 1):
        copied = tmp_path / "record" / f"muon-seed{seed}"
        assert {p.name for p in copied.iterdir()} >= {"config.yaml", "launches.jsonl", "metrics.jsonl", "console.log"}
    assert (
        speedrun.main([*argv[:3], "--record-only", *argv[3:]]) == 0
    )  # another record: a new folder, the first untouched
    assert (tmp_path / "record.2" / "README.md").is_file() and (tmp_path / "record" / "README.md").read_text() == readme


def test_a_record_is_named_by_the_optim_option_given_not_by_the_class_it_builds():
    from eval.record import attempt_points, default_record_dir

    for option in ("aurora", "aurora_wide"):  # both build optim.name aurora
        point = attempt_points(["experiment=speedrun_tiny", f"optim={option}", "train.steps=12"], [0], nproc=1)[0]
        assert default_record_dir(point) == Path(f"runs/records/speedrun_tiny-{option}-12")


def test_a_record_passes_at_the_first_validated_step_where_the_rule_holds(tmp_path):
    from eval.record import first_passing_step
    from eval.runs import Run

    def run(seed, losses):
        records = [{"step": s, "val_loss": v} for s, v in losses]
        return Run(tmp_path / str(seed), {"seed": seed}, records)

    runs = [run(0, [(100, 3.30), (110, 3.277), (120, 3.270)]), run(1, [(100, 3.29), (110, 3.277), (120, 3.271)])]
    assert first_passing_step(runs, 3.28) == (110, [3.277, 3.277])  # (3.28 - 3.277) * sqrt(2) = 0.0042


def test_a_tuning_warns_when_its_winner_is_the_lowest_or_highest_value_tried():
    from eval.tuning import winner_at_edge

    lrs = [{"matrix.lr": lr, "matrix.weight_decay": wd} for lr, wd in [(0.01, 0.1), (0.001, 0.2), (0.1, 0.3)]]
    assert winner_at_edge(lrs, 0) == {"matrix.weight_decay": "lowest"}  # lr in the middle
    assert winner_at_edge(lrs, 1) == {"matrix.lr": "lowest"}
    assert winner_at_edge(lrs, 2) == {"matrix.lr": "highest", "matrix.weight_decay": "highest"}
    assert winner_at_edge(lrs[:2], 0) == {}  # two values: each is an edge, which says nothing


def test_the_tuning_report_says_when_an_optimizers_winner_sits_at_an_edge(monkeypatch):
    from eval import tuning
    from train.sweep import Point

    losses = {"t0": 2.0, "t1": 2.1, "t2": 2.2}
    monkeypatch.setattr(tuning, "final_loss", lambda point: losses[point.name])
    rows = [({"matrix.lr": lr}, Point([], {"out_dir": f"runs/{t}"})) for t, lr in zip(losses, (0.001, 0.01, 0.1))]
    assert "The winner has the lowest matrix.lr tried" in tuning.trial_table("adamw", rows, 0)
    assert "The winner has" not in tuning.trial_table("adamw", rows, 1)  # 0.01, between 0.001 and 0.1


def test_equal_budget_tuning_gives_every_optimizer_the_same_trials_and_reruns_the_winner_on_the_full_horizon(
    micro_shards, tmp_path, capsys, monkeypatch
):
    tune = load_script("tune")
    out = tmp_path / "tune"
    argv = [
        "--optimizers",
        "adamw",
        "muon",
        "--trials",
        "2",
        "--seeds",
        "1",
        "--sampler",
        "grid",
        "--trial-steps",
        "2",
        "--jobs",
        "2",
        "--out",
        str(out),
        "--",
        *micro_overrides(micro_shards, "train.steps=4", "train.val_every=2"),
    ]
    from eval.tuning import LocalRuns

    interim = []
    run_finals = LocalRuns.run_finals

    def reading_the_report_first(self, tuning, finals, command):
        interim.append((out / "tuning.md").read_text())
        run_finals(self, tuning, finals, command)

    monkeypatch.setattr(LocalRuns, "run_finals", reading_the_report_first)
    too_long = [*argv[: argv.index("--trial-steps") + 1], "5", *argv[argv.index("--trial-steps") + 2 :]]
    assert exit_code(lambda: tune.main(too_long)) == 2 and not out.exists()
    assert "--trial-steps 5 is longer than the winners' runs (train.steps=4)" in capsys.readouterr().err
    assert tune.main(argv) == 0
    plan = json.loads((out / "tune.json").read_text())
    for optimizer in ("adamw", "muon"):
        entry = plan["optimizers"][optimizer]
        space = entry["space"]["matrix.lr"]
        lrs = [trial["settings"]["matrix.lr"] for trial in entry["trials"]]
        assert len(lrs) == 2 and all(space["low"] < lr < space["high"] for lr in lrs)
        assert math.log(lrs[1]) - math.log(lrs[0]) == pytest.approx(
            (math.log(space["high"]) - math.log(space["low"])) / 2, rel=1e-3
        )
        assert [logged_steps(Path(trial["run"])) for trial in entry["trials"]] == [2, 2]  # the trials' horizon
        assert logged_steps(out / "final" / f"{optimizer}-seed1") == 4  # the winner, on a fresh seed, full horizon
    report = (out / "tuning.md").read_text()
    assert report.count("**(winner)**") == 2 and "## The winners on fresh seeds" in report
    assert "2 trials x 2 steps" in report and "1 fresh seeds (1) for the winner, 4 steps each" in report
    assert interim[0].count("**(winner)**") == 2 and f"Running: 2 runs in {out / 'final'}" in interim[0]
    assert (out / "tuning.png").read_bytes()[:4] == PNG
    comparison_report([out], tmp_path / "report")
    assert (tmp_path / "report" / "tuning.png").read_bytes()[:4] == PNG


def test_the_report_lists_missing_and_partial_runs_instead_of_failing(micro_config, tmp_path, capsys):
    done = [
        train(micro_config(f"optim={name}", f"seed={seed}", out=f"runs/{name}-{seed}"))
        for name in ("adamw", "muon")
        for seed in (0, 1)
    ]
    partial = tmp_path / "runs" / "muon-2"
    train(micro_config("optim=muon", "seed=2", out="runs/muon-2"))
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")  # stopped at step 5
    (tmp_path / "runs" / "never-started" / "checkpoints").mkdir(parents=True)
    out = tmp_path / "report"
    comparison_report([tmp_path / "runs"], out, baseline="adamw", compare=["muon", "adamw"])
    text = (out / "report.md").read_text()
    assert f"{partial}: unfinished: logged 5 of 12 steps" in text
    assert f"{tmp_path / 'runs' / 'never-started'}: no config.yaml; no metrics.jsonl" in text
    muon_row = next(line for line in text.splitlines() if line.startswith("| muon"))
    assert "| 2/3 |" in muon_row  # the partial seed is listed but left out of the statistics
    assert "Welch t" in text and "optimization-track pairwise rule" in text and "speedup vs adamw" in text
    assert (out / "curves.png").read_bytes()[:4] == PNG
    assert len(done) == 4


def test_the_report_refuses_an_unknown_group_label(micro_config, tmp_path):
    train(micro_config(out="runs/a"))
    with pytest.raises(ValueError, match=r"no group is labelled 'sgd'; the groups are \['adamw'\]"):
        comparison_report([tmp_path / "runs"], tmp_path / "r", baseline="sgd")


def wandb_bytes(directory: Path, *expected: bytes) -> bytes:
    """The W&B run files under `directory`, once they hold every `expected` string or 30 s have
    passed: wandb's writer process may still be flushing after finish() (a file may hold only its
    header yet). The caller's assertion says what is missing."""
    deadline, written = time.monotonic() + 30, b""
    while time.monotonic() < deadline:
        written = b"".join(f.read_bytes() for f in directory.rglob("*.wandb"))
        if written and all(part in written for part in expected):
            break
        time.sleep(0.2)
    return written


def test_wandb_runs_are_tagged_and_the_report_table_is_logged(micro_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("AURORA_BENCH_SWEEP", "my-sweep")
    run = train(micro_config("wandb.mode=offline", "train.steps=2", "optim=muon", out="runs/a"))
    written = wandb_bytes(run / "wandb", b"optim:muon", b"mlp_x4", b"my-sweep")
    assert b"optim:muon" in written and b"mlp_x4" in written and b"my-sweep" in written
    out = tmp_path / "report"
    comparison_report([run], out, wandb="offline")
    assert b"comparison" in wandb_bytes(out / "wandb", b"comparison")
