"""The training loop end to end on a micro GPT: learning, determinism, resume, golden curves, bad input."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from model import build_model
from train.checkpoint import CHECKSUMS, list_checkpoints, load_model
from train.cli import exit_code
from train.loop import train, train_run
from train.metrics import read_metrics
from train.observers import Observer
from train.run import build_run
from train.rundir import RunDirError, config_changes
from train.schedule import lr_scale
from train.shards import DataError

GOLDEN = Path(__file__).resolve().parent / "golden"
REPO = Path(__file__).resolve().parent.parent


def losses(run_dir: Path, key: str = "train_loss") -> list[float]:
    return [r[key] for r in read_metrics(run_dir) if key in r]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a run directory but its lock, which each launch takes (and names itself in)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_lr_schedule_warms_up_holds_then_decays_to_zero():
    scales = [lr_scale(s, 10, warmup_frac=0.2, decay_frac=0.5) for s in range(10)]
    assert scales == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]


@pytest.mark.parametrize(
    "total, warmup, decay, expected",
    [
        (4, 0.0, 0.0, [1.0, 1.0, 1.0, 1.0, 1.0]),  # constant: no decay phase, even at step `total`
        (4, 0.25, 0.0, [1.0, 1.0, 1.0, 1.0, 1.0]),  # one warmup step reaches 1 at once
        (4, 0.0, 1.0, [1.0, 0.75, 0.5, 0.25, 0.0]),  # all decay
        (4, 1.0, 0.0, [0.25, 0.5, 0.75, 1.0, 1.0]),  # all warmup
        (1, 0.0, 0.5, [1.0, 1.0]),  # int(1 * 0.5) = 0 steps of decay
        (1, 0.0, 1.0, [1.0, 0.0]),
        (3, 0.5, 0.5, [1.0, 1.0, 1.0, 0.0]),  # one warmup step, int(1.5) = 1 decay step
    ],
)
def test_lr_schedule_at_its_edges_never_divides_by_zero(total, warmup, decay, expected):
    """Values for steps 0..total: the scheduler also evaluates step `total`, after the last update."""
    assert [lr_scale(s, total, warmup, decay) for s in range(total + 1)] == pytest.approx(expected)


def test_a_constant_lr_run_finishes_and_a_rerun_finds_it_complete(micro_config, capsys):
    for _ in range(2):  # the reproduction: train.decay_frac=0, run twice
        run_dir = train(micro_config("train.steps=4", "train.decay_frac=0", "train.checkpoint_every=2"))
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4] and "val_loss" in read_metrics(run_dir)[-1]
    assert "already complete at step 4" in capsys.readouterr().out


def test_a_run_killed_before_its_first_checkpoint_restarts_without_duplicating_steps(micro_config, capsys):
    full = train(micro_config("train.checkpoint_every=0"))
    killed = full.parent / "killed"
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "checkpoints")  # died before it saved anything
    restarted = train(micro_config("train.checkpoint_every=0", out="killed"))
    assert [r["step"] for r in read_metrics(restarted)] == list(range(1, 13))
    assert losses(restarted) == losses(full)
    assert (
        "set aside 12 record(s) of steps 1-12, logged after step 0 by an interrupted launch" in capsys.readouterr().out
    )
    assert len((killed / "metrics.discarded.jsonl").read_text().splitlines()) == 12


def test_short_run_loss_falls_and_the_run_directory_is_complete(micro_config):
    run_dir = train(micro_config())
    curve = losses(run_dir)
    assert len(curve) == 12
    assert curve[-1] < curve[0] - 0.3
    vals = losses(run_dir, "val_loss")
    assert len(vals) == 3 and vals[-1] < vals[0]
    for name in ("config.yaml", "metrics.jsonl", "console.log", "launches.jsonl"):
        assert (run_dir / name).is_file(), name
    record = read_metrics(run_dir)[-1]
    assert {"step", "tokens", "train_loss", "val_loss", "lr_scale", "tokens_per_s", "elapsed_s"} <= set(record)
    assert record["tokens"] == 12 * 512
    launch = json.loads((run_dir / "launches.jsonl").read_text().splitlines()[0])
    assert {"git_commit", "packages", "hardware", "torch", "argv"} <= set(launch)
    features = launch["hardware"]["cpu_features"]
    assert features["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(features["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert launch["ns_dtype"] is None  # AdamW runs no polar iteration (the main job's test checks Muon's)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "step_0000004",
        "step_0000008",
        "step_0000012",
    ]


def test_same_seed_gives_a_bit_identical_loss_curve(micro_config):
    first = train(micro_config(out="a"))
    second = train(micro_config(out="b"))
    assert losses(first) == losses(second)
    assert losses(first, "val_loss") == losses(second, "val_loss")


def test_different_seed_gives_a_different_curve(micro_config):
    assert losses(train(micro_config(out="a"))) != losses(train(micro_config("seed=1", out="b")))


@pytest.mark.parametrize("optimizer, tokenizer", [("adamw", "gpt2"), ("aurora", "gpt2"), ("muon", "bytes")])
def test_resumed_run_reproduces_the_uninterrupted_curve_exactly(micro_config, optimizer, tokenizer):
    uninterrupted = train(micro_config(f"optim={optimizer}", f"data.tokenizer={tokenizer}", out="full"))
    # Simulate a crash after step 4: only the step-4 checkpoint survives, and the
    # metrics of steps 5..12 were logged by the launch that died.
    crashed = uninterrupted.parent / "crashed"
    shutil.copytree(uninterrupted, crashed)
    for path in list_checkpoints(crashed / "checkpoints")[1:]:
        shutil.rmtree(path)
    resumed = train(micro_config(f"optim={optimizer}", f"data.tokenizer={tokenizer}", out="crashed"))
    assert losses(resumed) == losses(uninterrupted)
    assert losses(resumed, "val_loss") == losses(uninterrupted, "val_loss")
    discarded = (crashed / "metrics.discarded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in discarded] == list(range(5, 13))


def test_rerunning_a_finished_run_changes_nothing(micro_config):
    run_dir = train(micro_config())
    before = snapshot(run_dir / "checkpoints")
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    train(micro_config())
    assert snapshot(run_dir / "checkpoints") == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before


# Recycling Aurora with a trigger short enough that units are recycled within 12 steps.
RECYCLE_NOW = ("optim.matrix.recycle_after=2", "optim.matrix.recycle_below=0.5", "diagnostics.every=4")


@pytest.mark.parametrize(
    "optimizer, extra",
    [("adamw", ()), ("muon", ()), ("aurora", ()), ("aurora_recycle", RECYCLE_NOW), ("aurora_leverage", ())],
)
def test_loss_curve_matches_the_golden_curve(micro_config, optimizer, extra):
    """Golden curves catch silent changes to the model, data order or optimizers.

    Regenerate deliberately with AURORA_BENCH_UPDATE_GOLDEN=1 and say why in the commit.
    """
    run_dir = train(micro_config(f"optim={optimizer}", *extra))
    curve = losses(run_dir)
    if optimizer == "aurora_recycle":  # the curve must cover recycles, or it checks plain Aurora
        assert read_metrics(run_dir)[-1]["diag/recycled_units"] > 0
    golden = GOLDEN / f"micro_{optimizer}.json"
    if os.environ.get("AURORA_BENCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(curve, indent=1) + "\n")
    expected = json.loads(golden.read_text())
    assert curve == pytest.approx(expected, rel=1e-4)


def test_checkpoint_loads_back_as_a_model_for_eval(micro_config):
    run_dir = train(micro_config())
    model, cfg = load_model(run_dir)
    assert cfg["model"]["d_model"] == 32 and not model.training


def test_an_aurora_run_saved_before_pp_leverage_existed_has_the_same_config(micro_config):
    current = micro_config("optim=aurora")
    saved = copy.deepcopy(current)
    del saved["optim"]["matrix"]["pp_leverage"]
    assert config_changes(saved, current) == {}
    saved["optim"]["matrix"]["pp_leverage"] = "exact"
    assert config_changes(saved, current) == {"optim.matrix.pp_leverage": ("exact", "polar")}


def test_changed_config_is_refused_and_the_run_is_untouched(micro_config):
    run_dir = train(micro_config())
    before = snapshot(run_dir)
    with pytest.raises(RunDirError, match="optim.matrix.lr"):
        train(micro_config("optim.matrix.lr=0.5"))
    assert snapshot(run_dir) == before


def test_batch_that_does_not_divide_is_refused_before_touching_the_run(micro_config):
    run_dir = train(micro_config())
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="train.batch_tokens=500"):
        train(micro_config("train.batch_tokens=500"))
    assert snapshot(run_dir) == before


def test_unwritable_out_dir_is_refused(micro_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="not writable"):
        train(micro_config(f"out_dir={blocker / 'run'}"))


def test_missing_shards_name_the_prepare_command(micro_config, tmp_path):
    with pytest.raises(DataError, match="python -m train.prepare"):
        train(micro_config(f"data.dir={tmp_path / 'nothing_here'}"))


def test_sequence_longer_than_the_data_is_refused(micro_config):
    with pytest.raises(DataError):
        train(micro_config("train.seq_len=200000", "train.batch_tokens=800000"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override", ["train.stesp=10", "+train.stesp=10", "++train.stesp=10"])
def test_cli_refuses_an_unknown_config_key_even_when_added_with_plus(override):
    done = run_cli(override)
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: unknown config key 'train.stesp' (did you mean train.steps?); no file in conf/ defines it\n"
    )


def test_cli_rejects_an_unknown_group_option_naming_the_options():
    done = run_cli("optim=sgd")
    assert done.returncode == 2
    options = sorted(path.stem for path in (REPO / "conf" / "optim").glob("*.yaml"))
    assert done.stderr == f"error: optim=sgd: no such option; optim options are {', '.join(options)}\n"
    assert len(done.stderr.splitlines()) == 1


def test_cli_refuses_an_option_of_another_optimizer():
    done = run_cli("optim=muon", "+optim.matrix.pp_beta=0.3")
    assert (done.returncode, done.stderr) == (2, "error: optim.matrix.pp_beta is not an option of muon; remove it\n")


def test_cli_checks_the_config_for_the_world_size_torchrun_gives_before_joining_it():
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}  # as torchrun sets them; the group is joined later
    command = [sys.executable, "-m", "train", "diagnostics.trace_every=2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (
        2,
        "error: diagnostics.trace_every reads whole weights and optimizer state: run it in one process\n",
    )


def test_multirun_checks_every_point_before_the_first_run(micro_shards, tmp_path):
    from tests.conftest import micro_overrides

    done = run_cli(
        "-m",
        *micro_overrides(
            micro_shards,
            f"out_dir={tmp_path}/" + "${optim.matrix.ns_method}",
            "optim=muon",
            "optim.matrix.ns_method=quintic,bogus",
        ),
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: sweep point 2 of 2 (")
    assert "ns_method must be one of" in done.stderr and not (tmp_path / "quintic").exists()


def test_multirun_prints_a_header_per_point_and_a_summary_and_writes_the_index(micro_shards, tmp_path):
    from tests.conftest import micro_overrides

    done = run_cli(
        "-m", *micro_overrides(micro_shards, f"out_dir={tmp_path}/seed" + "${seed}", "seed=0,1", "train.steps=2")
    )
    assert done.returncode == 0, done.stderr
    assert "=== sweep point 1/2: " in done.stdout and "| adamw seed 1 |" in done.stdout
    assert "sweep summary (2 runs):" in done.stdout and "2 of 2 runs done" in done.stdout
    index = json.loads((tmp_path / "sweep_index.json").read_text())
    assert {name: run["status"] for name, run in index["runs"].items()} == {"seed0": "done", "seed1": "done"}


# Each recipe's run directory for an optim option: the option given names it (aurora_leverage and
# aurora_wide build optim.name aurora), and a base option keeps the directory it always had.
RUN_DIRECTORIES = {
    None: "runs/tiny-{}-seed0",
    "quickstart": "runs/tiny-{}-seed0",
    "neuron_death": "runs/neuron_death/{}-x4.0-seed0",
    "neuron_death_bytes": "runs/neuron_death_bytes/{}-x4.0-seed0",
    "speedrun_tiny": "runs/speedrun_tiny/{}-250-seed0",
    "speedrun_track3": "runs/speedrun_track3/{}-3250-seed0",
}


def test_every_recipe_covers_the_run_directories_checked():
    assert set(RUN_DIRECTORIES) - {None} == {path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml")}


@pytest.mark.parametrize("recipe", RUN_DIRECTORIES)
def test_each_optim_option_has_its_own_run_directory_named_by_the_option(recipe):
    from tests.conftest import compose_config

    experiment = [f"experiment={recipe}"] if recipe else []
    for option in ("aurora", "aurora_leverage", "aurora_wide"):
        assert compose_config(*experiment, f"optim={option}")["out_dir"] == RUN_DIRECTORIES[recipe].format(option)


def test_composing_inside_a_hydra_job_names_the_run_by_its_own_option_and_leaves_the_jobs_config(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tests.conftest import CONF_DIR, compose_config

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # put back after the test
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        HydraConfig.instance().set_config(compose("config", ["optim=muon"], return_hydra_config=True))  # the job's
        assert compose_config("optim=aurora_wide")["out_dir"] == "runs/tiny-aurora_wide-seed0"
        assert HydraConfig.get().runtime.choices.optim == "muon"


def test_a_multirun_over_optim_options_trains_each_in_the_run_directory_its_preflight_named(micro_shards, tmp_path):
    from tests.conftest import micro_overrides

    overrides = micro_overrides(micro_shards, "optim=aurora,aurora_leverage", "train.steps=1")
    done = subprocess.run(
        [sys.executable, "-m", "train", "-m", *overrides],
        cwd=tmp_path,  # the default out_dir, runs/..., is relative
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "runs" / "sweep_index.json").read_text())  # the preflight's directories
    assert sorted(index["runs"]) == ["tiny-aurora-seed0", "tiny-aurora_leverage-seed0"]
    for name in index["runs"]:  # where Hydra's jobs trained
        assert [record["step"] for record in read_metrics(tmp_path / "runs" / name)] == [1]


def test_a_tokenizer_that_disagrees_with_the_checkpoint_is_refused_naming_both(micro_config):
    from model import build_model
    from optim import build_optimizer
    from train.checkpoint import CheckpointError, load_checkpoint

    cfg = micro_config()
    run_dir = train(cfg)
    model = build_model(cfg["model"])
    with pytest.raises(CheckpointError, match="trained with tokenizer 'gpt2', but data.tokenizer is 'bytes'"):
        load_checkpoint(
            list_checkpoints(run_dir / "checkpoints")[-1], model, build_optimizer(cfg["optim"], model), "bytes"
        )


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(micro_shards, tmp_path):
    from tests.conftest import micro_overrides

    done = run_cli(*micro_overrides(micro_shards, f"out_dir={tmp_path / 'run'}", "train.batch_tokens=500"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: train.batch_tokens=500")
    assert not (tmp_path / "run").exists()


def test_wandb_offline_mode_needs_no_key_and_gets_the_resolved_config(micro_config, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = train(micro_config("wandb.mode=offline", "train.steps=2", "train.val_every=0"))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    (record_file,) = offline_runs[0].glob("run-*.wandb")
    deadline = time.monotonic() + 30  # wandb's writer process may still be flushing after finish()
    while b"train_loss" not in record_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    written = record_file.read_bytes()
    assert b"out_dir" in written and b"train_loss" in written


def test_hellaswag_subset_is_scored_during_training_when_asked(micro_config):
    sample = Path(__file__).resolve().parent / "data" / "hellaswag_sample.jsonl"
    run_dir = train(
        micro_config(
            "model.vocab_size=50304",  # HellaSwag text needs the whole GPT-2 vocabulary
            "train.seq_len=128",  # every ending must fit
            "train.steps=4",
            "eval.hellaswag_every=2",
            "eval.hellaswag_examples=4",
            f"eval.hellaswag_data_path={sample}",
        )
    )
    scored = [r for r in read_metrics(run_dir) if "hellaswag_lm_eval_acc_norm" in r]
    assert [r["step"] for r in scored] == [2, 4]
    assert all(r["hellaswag_n"] == 4 and 0 <= r["hellaswag_llmc_acc_norm"] <= 1 for r in scored)


def test_hellaswag_during_training_refuses_a_sequence_too_short_for_its_endings(micro_config):
    sample = Path(__file__).resolve().parent / "data" / "hellaswag_sample.jsonl"
    with pytest.raises(ValueError, match="needs train.seq_len >"):
        train(micro_config("model.vocab_size=50304", "eval.hellaswag_every=2", f"eval.hellaswag_data_path={sample}"))


# --- the run's seams: observers named by import path, checked when the run is built ------------


def plain_sgd(optim_cfg, model):  # a torch optimizer: it captures no update of its own
    return torch.optim.SGD(model.parameters(), lr=0.1)


class NeedsAnEma(Observer):
    """An observer that reads an attribute only some optimizers have."""

    needs = ("ema_weights",)

    @classmethod
    def from_run(cls, cfg, run):
        return cls()

    def wants(self, step):
        return True


def test_an_observer_the_optimizer_cannot_serve_is_refused_when_the_run_is_built(micro_config, capsys):
    cfg = micro_config()
    cfg["observers"]["ema"] = f"{__name__}.NeedsAnEma"
    assert exit_code(lambda: train_run(build_run(cfg, make_optimizer=plain_sgd))) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith("error: observers.ema (NeedsAnEma) needs the optimizer's ema_weights, which SGD does not provide")
    )
    assert not Path(cfg["out_dir"]).exists()


def test_a_torch_optimizer_gets_the_update_diagnostics_from_its_parameter_change(micro_config):
    run = build_run(micro_config("train.steps=4", "diagnostics.every=2", "diagnostics.starvation_window=1"), plain_sgd)
    records = [r for r in read_metrics(train_run(run)) if "diag/mlp.hidden/act_dead_frac" in r]
    assert [r["step"] for r in records] == [2, 4]
    for statistic in ("leverage_cv", "starved_frac", "stale_update_frac"):
        assert all(f"diag/mlp.up/{statistic}" in r for r in records), statistic


def test_train_step_takes_a_fake_optimizer_the_observers_do_not_need(micro_config):
    class CountingSGD(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            CountingSGD.steps += self.param_groups[0]["lr"] > 0  # not DCP's lr-0 step that makes the state to save
            return super().step(closure)

    def counting_sgd(optim_cfg, model):
        return CountingSGD(model.parameters(), lr=0.1)

    run = build_run(micro_config("train.steps=3"), make_optimizer=counting_sgd)
    train_run(run)
    assert CountingSGD.steps == 3 and [r["step"] for r in read_metrics(run.dir.path)] == [1, 2, 3]


@pytest.mark.parametrize(
    "path, expected",
    [
        (
            "no_such_module.Watcher",
            r"error: observers.mine: cannot import 'no_such_module.Watcher' \(ModuleNotFoundError",
        ),
        (
            "train.observers.NoSuchObserver",
            r"error: observers.mine: cannot import 'train.observers.NoSuchObserver' \(Attr",
        ),
        ("builtins.dict", r"error: observers.mine: 'builtins.dict' is not an Observer \(it lacks from_run, wants, "),
    ],
)
def test_an_observer_path_that_names_no_observer_is_refused_before_anything_is_written(
    micro_config, capsys, path, expected
):
    cfg = micro_config()
    cfg["observers"]["mine"] = path
    assert exit_code(lambda: train(cfg)) == 2
    assert re.match(expected, capsys.readouterr().err.strip())
    assert not Path(cfg["out_dir"]).exists()


def test_cli_takes_an_observer_the_user_adds_and_checks_its_path(micro_shards, tmp_path):
    from tests.conftest import micro_overrides

    done = run_cli(
        *micro_overrides(micro_shards, f"out_dir={tmp_path / 'run'}", "+observers.mine=no_such_module.Watcher")
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: observers.mine: cannot import 'no_such_module.Watcher' (ModuleNotFoundError")
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert not (tmp_path / "run").exists()


USER_OBSERVER = '''
class EveryStep:
    """An observer of the user's, with no base class: it sees every step."""

    needs = ("captured_updates",)
    calls = []

    @classmethod
    def from_run(cls, cfg, run):
        return cls()

    def wants(self, step):
        return True

    def before_step(self, step):
        EveryStep.calls.append(("before", step))

    def after_step(self, step, record, updates):
        EveryStep.calls.append(("after", step))
        record["mine/updated_matrices"] = len(updates)

    def state_dict(self):
        return None

    def resume(self, step, state):
        pass

    def save(self):
        pass
'''


def test_an_observer_from_outside_the_package_sees_every_step(micro_config, tmp_path, monkeypatch):
    (tmp_path / "my_observers.py").write_text(USER_OBSERVER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = micro_config()
    cfg["observers"]["mine"] = "my_observers.EveryStep"
    records = read_metrics(train(cfg))
    from my_observers import EveryStep

    assert EveryStep.calls == [(when, step) for step in range(1, 13) for when in ("before", "after")]
    assert [r["mine/updated_matrices"] for r in records] == [len(list(build_model(cfg["model"]).parameters()))] * 12


def test_no_train_module_imports_eval():
    script = (
        "import pkgutil, importlib, sys, train\n"
        "for module in pkgutil.iter_modules(train.__path__):\n"
        "    if module.name != '__main__':\n"
        "        importlib.import_module('train.' + module.name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'eval' or m.startswith('eval.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_a_checkpoint_from_before_run_state_and_observers_resumes_exactly(micro_config):
    overrides = ("optim=aurora", "diagnostics.every=2", "diagnostics.probe_tokens=64")
    uninterrupted = train(micro_config(*overrides, out="full"))
    old = uninterrupted.parent / "old"
    shutil.copytree(uninterrupted, old)
    for path in list_checkpoints(old / "checkpoints")[1:]:
        shutil.rmtree(path)
    # Make the run what an older version of this code wrote: no `observers` in its config, and
    # the checkpoint's run state and observer states under the meta keys of that time.
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["observers"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    checkpoint = list_checkpoints(old / "checkpoints")[0]
    meta = torch.load(checkpoint / "meta.pt", weights_only=False)
    run_state, observers = meta.pop("run_state"), meta.pop("observers")
    del meta["config"]["observers"]
    meta |= {
        "elapsed_s": run_state["elapsed_s"],
        "skipped_steps": 0,
        "diagnostics": observers["neurons"],
        "unit_trace": None,
    }
    torch.save(meta, checkpoint / "meta.pt")
    (checkpoint / CHECKSUMS).unlink()
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(checkpoint.iterdir())
    }
    (checkpoint / CHECKSUMS).write_text(json.dumps({"files": files}))

    resumed = read_metrics(train(micro_config(*overrides, out="old")))
    expected = read_metrics(uninterrupted)
    for record in (*resumed, *expected):
        for key in ("tokens_per_s", "optim_step_ms", "elapsed_s"):
            del record[key]
    assert resumed == expected
