"""Neuron diagnostics (train/diagnostics.py): each metric on a constructed case, the naming scheme,
update capture, starvation tracking, and that measuring changes nothing about training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model import build_model
from optim import build_optimizer
from optim.split import SplitOptimizer
from tests.conftest import compose_config, micro_overrides
from tests.test_scripts import load_script
from train.diagnostics import (
    LEVERAGE_HIST_EDGES,
    NeuronDiagnostics,
    StarvationTracker,
    activation_death,
    captured_updates,
    leverage_histogram,
    leverage_stats,
    relative_leverage,
    stale_update_stats,
    update_leverage,
)
from train.loop import train
from train.metrics import read_metrics

MICRO_GPT = dict(vocab_size=512, n_layer=2, n_head=2, head_dim=16, d_model=32)  # MLP: 128 x 32


def micro_gpt(**overrides):
    torch.manual_seed(0)
    return build_model({**MICRO_GPT, **overrides})


def probe(rows: int = 4, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, MICRO_GPT["vocab_size"], (rows, seq_len), generator=torch.Generator().manual_seed(1))


def hadamard(n: int) -> torch.Tensor:
    H = torch.ones(1, 1)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


# --- activation death ---


def test_a_layer_with_k_units_forced_dead_reports_exactly_k():
    acts = torch.rand(50, 20) + 0.1
    dead = [2, 7, 11]
    acts[:, dead] = 0.0
    death = activation_death(acts, relu_family=True)
    assert death["dead"] == 3 and death["nearly_dead"] == 3 and death["units"] == 20


def test_a_gpt_with_k_up_projection_rows_zeroed_reports_exactly_k_dead_units():
    model = micro_gpt()
    with torch.no_grad():
        model.blocks[0].mlp.up.weight[:5] = 0.0  # relu(0)^2 = 0 on every token
    diagnostics = NeuronDiagnostics.for_gpt(model, probe(), every=1)
    metrics = diagnostics.measure(1, {})
    assert metrics["diag/blocks.0.mlp.hidden/act_dead_frac"] == 5 / 128
    assert metrics["diag/blocks.1.mlp.hidden/act_dead_frac"] == 0.0
    assert metrics["diag/mlp.hidden/act_dead_frac"] == 5 / 256  # pooled over both blocks


def test_nearly_dead_means_below_one_percent_of_the_layer_mean_and_exact_death_needs_relu():
    acts = torch.ones(40, 10)
    acts[:, 0] = 0.005  # 0.5% of ~1: nearly dead
    acts[:, 1] = 0.02  # 2%: alive
    death = activation_death(-acts, relu_family=False)  # |activation|: the sign does not matter
    assert death["nearly_dead"] == 1 and "dead" not in death


def test_swiglu_gpt_logs_nearly_dead_but_no_exactly_dead_fraction():
    diagnostics = NeuronDiagnostics.for_gpt(micro_gpt(activation="swiglu"), probe(), every=1)
    metrics = diagnostics.measure(1, {})
    assert "diag/blocks.0.mlp.hidden/act_nearly_dead_frac" in metrics
    assert not any(key.endswith("act_dead_frac") for key in metrics)


# --- update leverage ---


def test_an_exactly_uniform_semi_orthogonal_update_reports_cv_zero():
    U = hadamard(16)[:, :4] / 4  # 16x4, UᵀU = I exactly, every squared row norm 4/16
    assert torch.equal(U.T @ U, torch.eye(4))
    assert torch.equal(update_leverage(U), torch.full((16,), 0.25))
    for update in (U, 3.7 * U.T):  # scale-free, and a wide update is read as its transpose
        stats = leverage_stats(relative_leverage(update))
        assert stats["leverage_cv"] == 0.0 and stats["leverage_low_frac"] == 0.0
        assert stats["leverage_rel_min"] == pytest.approx(1.0) and stats["leverage_rel_max"] == pytest.approx(1.0)


def test_a_rank_one_update_has_leverage_proportional_to_its_squared_row_weights():
    u, v = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, -1.0, 0.5])
    leverage = update_leverage(torch.outer(u, v))  # m=6, n=3: ℓᵢ = n uᵢ² / ‖u‖²
    assert torch.allclose(leverage, torch.tensor([1 / 3, 4 / 3, 4 / 3, 0.0, 0.0, 0.0]))
    stats = leverage_stats(relative_leverage(torch.outer(u, v)))  # relative = ℓ / (3/6)
    assert stats["leverage_low_frac"] == 0.5
    assert stats["leverage_cv"] == pytest.approx(math.sqrt(13) / 3)
    assert stats["leverage_rel_max"] == pytest.approx(8 / 3)


def test_a_rank_deficient_semi_orthogonal_update_is_rescaled_to_sum_n():
    U = torch.zeros(4, 3)
    U[0, 0] = U[1, 1] = 1.0  # rank 2 < n = 3: squared row norms [1, 1, 0, 0] sum to 2, not 3
    assert torch.equal(update_leverage(U), torch.tensor([1.5, 1.5, 0.0, 0.0]))


def test_an_all_zero_update_has_no_leverage():
    with pytest.raises(ValueError, match="all-zero"):
        update_leverage(torch.zeros(6, 3))


def test_leverage_histogram_uses_fixed_quarter_decade_bins():
    counts = leverage_histogram(torch.tensor([0.0, 0.05, 0.1, 1.0, 100.0]))
    assert len(counts) == len(LEVERAGE_HIST_EDGES) - 1 == 20
    nonzero = {i: c for i, c in enumerate(counts) if c}
    # [0, 1e-3), [10^-1.5, 10^-1.25), [10^-1, 10^-0.75) (the starvation threshold opens a bin),
    # [1, 10^0.25), [10^1.5, inf)
    assert nonzero == {0: 1, 7: 1, 9: 1, 13: 1, 19: 1}


# --- starvation ---


def test_a_row_is_starved_only_when_low_in_each_of_the_last_k_diagnostics():
    tracker = StarvationTracker(window=3)
    low, high = 0.05, 1.0
    history = [  # rows: always low | low except the 2nd diagnostic | never low
        [low, low, high],
        [low, high, high],
        [low, low, high],
        [low, low, high],
        [low, low, high],
    ]
    starved = [tracker.observe("w", torch.tensor(relative)) for relative in history]
    assert starved[0] is None and starved[1] is None  # fewer than k diagnostics: undefined
    assert starved[2].tolist() == [True, False, False]
    assert starved[3].tolist() == [True, False, False]  # the 2nd diagnostic is still in the window
    assert starved[4].tolist() == [True, True, False]

    resumed = StarvationTracker(window=3)
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.observe("w", torch.tensor([low, high, low])).tolist() == [True, False, False]


def test_starved_fraction_is_logged_once_the_window_has_filled():
    model = micro_gpt()
    diagnostics = NeuronDiagnostics.for_gpt(model, probe(), every=1, starvation_window=2)
    up = torch.ones(128, 32)
    up[:32] = 0.01  # relative leverage 1e-4 / mean: low
    updates = {"blocks.0.mlp.up.weight": up}
    assert "diag/blocks.0.mlp.up/starved_frac" not in diagnostics.measure(1, updates)
    metrics = diagnostics.measure(2, updates)
    assert metrics["diag/blocks.0.mlp.up/starved_frac"] == 0.25
    assert metrics["diag/blocks.0.mlp.up/leverage_low_frac"] == 0.25


def test_stale_update_fraction_is_the_update_mass_on_rows_the_gradient_does_not_ask_for():
    relative = torch.tensor([2.0, 1.0, 0.5, 0.5])  # mean 1, as relative leverages are
    grad_rows = torch.tensor([0.0, 1.0, 1e-3, 2.0])  # median 0.5005: rows 0 and 2 are below 1% of it
    stats = stale_update_stats(relative, grad_rows)
    assert stats == {"stale_update_frac": pytest.approx(2.5 / 4.0), "zero_grad_frac": 0.25}
    assert stale_update_stats(relative, torch.ones(4))["stale_update_frac"] == 0.0


def stale_metrics_after_a_gradient_stops(optim_name: str, *overrides: str, wrap=lambda optimizer: optimizer) -> dict:
    """Three steps; on the third, three `up` rows of block 0 get no gradient (their momentum remains).
    `wrap` may hide the optimizer's own capture behind another optimizer object."""
    model = micro_gpt()
    optimizer = wrap(build_optimizer(compose_config(f"optim={optim_name}", *overrides)["optim"], model))
    diagnostics = NeuronDiagnostics.for_gpt(model, probe(), every=1, starvation_window=1)
    for step in (1, 2, 3):
        model(*probe().split(8, dim=1)).backward()
        if step == 3:
            with torch.no_grad():
                model.blocks[0].mlp.up.weight.grad[:3] = 0.0
        gradient_rows = diagnostics.gradient_rows()
        with captured_updates(optimizer, diagnostics.weights) as updates:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return diagnostics.measure(3, updates, gradient_rows)


def test_measure_logs_stale_updates_when_given_the_gradients_of_the_step():
    aurora, muon = (stale_metrics_after_a_gradient_stops(name) for name in ("aurora", "muon"))
    assert (
        aurora["diag/blocks.0.mlp.up/zero_grad_frac"] == 3 / 128 and aurora["diag/blocks.1.mlp.up/zero_grad_frac"] == 0
    )
    # Aurora's row scaling gives each stale row about an average row's share (1/128) of the update; Muon less
    assert aurora["diag/blocks.0.mlp.up/stale_update_frac"] > 0.5 * 3 / 128
    assert muon["diag/blocks.0.mlp.up/stale_update_frac"] < aurora["diag/blocks.0.mlp.up/stale_update_frac"]
    assert "diag/mlp.up/stale_update_frac" in aurora


# --- the update of a step, for any optimizer ---


def test_muons_parameter_change_without_weight_decay_gives_the_diagnostics_of_its_captured_direction():
    no_decay = "optim.matrix.weight_decay=0"
    direction = stale_metrics_after_a_gradient_stops("muon", no_decay)
    # SplitOptimizer has no captured_updates of its own: its step's updates are the parameter change
    change = stale_metrics_after_a_gradient_stops("muon", no_decay, wrap=lambda muon: SplitOptimizer([muon]))
    assert direction["diag/blocks.0.mlp.up/zero_grad_frac"] == 3 / 128  # the case has stale rows
    assert change.keys() == direction.keys()
    for key, value in direction.items():
        assert change[key] == (value if isinstance(value, list) else pytest.approx(value, rel=1e-4, abs=1e-7)), key


def test_the_parameter_change_holds_the_weight_decay_and_only_the_matrices_asked_for():
    weight, other = torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(4, 2))
    optimizer = torch.optim.SGD([weight, other], lr=0.1, weight_decay=0.5)  # decay added to the gradient
    weight.grad, other.grad = torch.zeros(6, 3), torch.ones(4, 2)
    weight.grad[0] = 1.0
    before = weight.detach().clone()
    with captured_updates(optimizer, {"w": weight}) as updates:
        optimizer.step()
    assert list(updates) == ["w"]
    torch.testing.assert_close(updates["w"], -0.1 * (weight.grad + 0.5 * before))  # rows 1-5: the decay alone


def test_an_optimizer_that_captures_its_direction_hands_it_over_and_stops_capturing_after():
    model = micro_gpt()
    muon = build_optimizer(compose_config("optim=muon")["optim"], model)
    model(*probe().split(8, dim=1)).backward()
    with captured_updates(muon, {}) as updates:
        muon.step()
    assert set(updates) == {name for name, _ in model.named_parameters()} and muon.captured_updates is None


# --- the class: names, cadence, side effects ---


def test_measure_returns_flat_json_ready_metrics_under_the_documented_names():
    model = micro_gpt()
    optimizer = build_optimizer(compose_config("optim=muon")["optim"], model)
    diagnostics = NeuronDiagnostics.for_gpt(model, probe(), every=5, starvation_window=1, histogram_steps=[10])
    assert [step for step in range(1, 16) if diagnostics.wants(step)] == [5, 10, 15]
    for _ in (1, 2):  # the zero-initialised down projections pass no gradient to `up` on step 1
        model(*probe().split(8, dim=1)).backward()
        optimizer.captured_updates = {}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    metrics = diagnostics.measure(10, optimizer.captured_updates)
    json.dumps(metrics)
    for block in ("blocks.0.", "blocks.1.", ""):  # per block, then pooled over blocks
        activations = ("act_dead_frac", "act_nearly_dead_frac", "act_mean_abs")
        assert {f"diag/{block}mlp.hidden/{key}" for key in activations} <= set(metrics)
        for matrix in ("mlp.up", "mlp.down", "attn.q", "attn.out"):
            stats = (
                "leverage_cv",
                "leverage_rel_min",
                "leverage_rel_max",
                "leverage_low_frac",
                "starved_frac",
                "leverage_hist",
            )
            assert {f"diag/{block}{matrix}/{key}" for key in stats} <= set(metrics)
    assert "diag/blocks.0.mlp.up/weight_row_norm_cv" in metrics
    assert "diag/mlp.up/leverage_hist" not in diagnostics.measure(5, optimizer.captured_updates)


def test_probe_forward_stops_after_the_last_mlp_and_restores_train_mode():
    model = micro_gpt()
    head_calls = []
    model.lm_head.register_forward_hook(lambda *args: head_calls.append(1))
    NeuronDiagnostics.for_gpt(model, probe(), every=1).measure(1, {})
    assert head_calls == [] and model.training


def test_histograms_come_at_the_first_diagnostic_at_or_after_each_histogram_step():
    diagnostics = NeuronDiagnostics.for_gpt(micro_gpt(), probe(), every=30, histogram_steps=[100, 510])
    updates = {"blocks.0.mlp.up.weight": torch.randn(128, 32)}
    logged = [s for s in range(30, 601, 30) if "diag/mlp.up/leverage_hist" in diagnostics.measure(s, updates)]
    assert logged == [120, 510]


def built_in(name: str):
    return lambda model: build_optimizer(compose_config(f"optim={name}")["optim"], model)


def torch_adamw(model):  # a torch optimizer: its update is the parameter change, weight decay included
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize(
    "make_optimizer", [built_in("muon"), built_in("adamw"), torch_adamw], ids=["muon", "adamw", "torch-adamw"]
)
def test_diagnostics_on_or_off_give_a_bit_identical_loss_curve(make_optimizer):
    def run(with_diagnostics: bool) -> tuple[list[float], dict]:
        model = micro_gpt()
        optimizer = make_optimizer(model)
        diagnostics = NeuronDiagnostics.for_gpt(model, probe(), every=2, starvation_window=2, histogram_steps=[4])
        batches = torch.randint(0, 512, (4, 4, 17), generator=torch.Generator().manual_seed(2))
        curve = []
        for step, batch in enumerate(batches, start=1):
            loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            if with_diagnostics and diagnostics.wants(step):
                with captured_updates(optimizer, diagnostics.weights) as updates:
                    optimizer.step()
                assert "diag/mlp.up/leverage_cv" in diagnostics.measure(step, updates)
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(loss.item())
        return curve, model.state_dict()

    (curve_on, state_on), (curve_off, state_off) = run(True), run(False)
    assert curve_on == curve_off
    assert all(torch.equal(state_on[key], state_off[key]) for key in state_off)


def test_overhead_benchmark_times_a_step_and_a_diagnostic(micro_shards):
    cfg = compose_config("experiment=neuron_death", *micro_overrides(micro_shards), "diagnostics.probe_tokens=256")
    result = load_script("bench_diagnostics").benchmark_overhead(cfg, steps=3)
    assert result["train_step_s"] > 0 and result["diagnostic_s"] > 0
    assert result["overhead_at_every"] == pytest.approx(
        result["diagnostic_per_step"] / 20
    )  # the experiment's every: 20


def test_training_loop_gives_the_same_losses_with_diagnostics_on_and_off(micro_config):
    def records(every: int) -> list[dict]:
        overrides = ("experiment=neuron_death", f"diagnostics.every={every}", "diagnostics.probe_tokens=256")
        return read_metrics(train(micro_config(*overrides, out=f"every{every}")))

    def losses(run: list[dict]) -> list[tuple]:
        return [(r["step"], r["train_loss"], r.get("val_loss")) for r in run]

    measured, plain = records(2), records(0)
    assert losses(measured) == losses(plain)
    diagnosed = [r["step"] for r in measured if "diag/mlp.up/leverage_cv" in r]
    assert diagnosed == list(range(2, 13, 2))
    assert not any(key.startswith("diag/") for r in plain for key in r)
