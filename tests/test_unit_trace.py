"""Per-unit traces (train/unit_trace.py) and their analysis (eval/death_mechanism.py, scripts/death_mechanism.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

from eval.death_mechanism import analyse, deaths
from tests.test_scripts import load_script
from train.checkpoint import list_checkpoints
from train.loop import train
from train.unit_trace import QUANTITIES, load_trace

TRACED = ("optim=aurora", "diagnostics.trace_every=2", "diagnostics.probe_tokens=256")


def test_a_trace_holds_every_quantity_for_every_unit_at_every_traced_step(micro_config):
    trace = load_trace(train(micro_config(*TRACED)))
    assert trace["steps"] == [2, 4, 6, 8, 10, 12]
    assert trace["blocks"] == ["blocks.0.mlp.up", "blocks.1.mlp.up"]
    for name in QUANTITIES:
        assert trace[name].shape == (6, 2, 128), name  # micro GPT: MLP 4 x 32 units
    assert torch.all(trace["grad"] >= 0) and torch.all(trace["momentum"] >= 0)
    assert trace["update"][1:].mean(dim=-1).allclose(torch.ones(5, 2))  # relative to the matrix's mean row
    assert torch.all(trace["pre_max"] >= trace["pre_mean"])
    # weight decay only ever pulls a unit's mean pre-activation toward zero
    assert torch.all(trace["push_decay"] * trace["pre_mean"] <= 1e-6)


def test_a_resumed_run_traces_exactly_what_an_uninterrupted_one_does(micro_config):
    full = train(micro_config(*TRACED, out="full"))
    crashed = full.parent / "crashed"
    shutil.copytree(full, crashed)
    for path in list_checkpoints(crashed / "checkpoints")[1:]:
        shutil.rmtree(path)
    resumed = load_trace(train(micro_config(*TRACED, out="crashed")))
    expected = load_trace(full)
    assert resumed["steps"] == expected["steps"]
    for name in QUANTITIES:
        assert torch.equal(resumed[name], expected[name]), name


def test_tracing_is_refused_on_several_ranks():
    from tests.conftest import compose_config
    from train.config import ConfigError, check_config

    with pytest.raises(ConfigError, match="trace_every .* one process"):
        check_config(compose_config("diagnostics.trace_every=5"), world_size=2)


def test_a_unit_died_at_the_first_trace_from_which_it_stays_dead():
    alive, dead = 1.0, -1.0
    pre_max = torch.tensor(
        [
            [alive, alive, alive, dead],  # unit 3 was dead from the start: it did not die
            [alive, dead, alive, dead],  # unit 1 dies here for good
            [dead, dead, alive, dead],  # unit 0 dies here for good
            [dead, dead, dead, dead],  # unit 2 flickers: dead at the last trace only
        ]
    )[:, None, :]  # [steps, blocks = 1, units]
    died, death_index = deaths({"pre_max": pre_max})
    assert died[0].tolist() == [True, True, True, False]
    assert death_index[0].tolist() == [2, 1, 3, -1]


def test_the_mechanism_report_aligns_the_units_that_died(micro_config, tmp_path):
    run = train(micro_config(*TRACED, "train.steps=16", "optim.matrix.lr=0.5"))  # a large lr kills units
    mechanism = load_script("death_mechanism")
    assert mechanism.main([str(run), "--out", str(tmp_path / "mechanism")]) == 0
    text = (tmp_path / "mechanism" / "mechanism.md").read_text()
    assert f"| {run.name} | aurora | 16 | 256 |" in text


def test_the_mechanism_splits_a_units_fall_into_its_own_weights_and_its_inputs_drift(tmp_path):
    steps, units, death = 50, 4, 30  # unit 0 dies at trace 30; the others live throughout
    trace = {name: torch.ones(steps, 1, units) for name in QUANTITIES}
    trace["own"], trace["drift"] = torch.zeros(steps, 1, units), torch.zeros(steps, 1, units)
    trace["own"][:death, 0, 0], trace["drift"][:death, 0, 0] = -0.1, -0.3  # the approach: drift does 3/4
    trace["own"][death, 0, 0], trace["drift"][death, 0, 0] = -1.0, -2.0  # the interval in which it crosses zero
    trace["pre_max"][death:, 0, 0] = -1.0
    torch.save(
        {"steps": list(range(10, 10 * steps + 1, 10)), "blocks": ["blocks.0.mlp.up"], **trace},
        tmp_path / "unit_trace.pt",
    )

    summary = analyse(tmp_path)["summary"]
    assert summary["died"] == 1 and summary["median_death_step"] == 10 * (death + 1)
    assert summary["own_before"] == pytest.approx(-1.0) and summary["drift_before"] == pytest.approx(-3.0)  # 10 traces
    assert summary["drift_share_before"] == pytest.approx(0.75)
    assert (summary["own_crossing"], summary["drift_crossing"]) == (-1.0, -2.0)
