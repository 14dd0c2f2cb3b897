"""The optimizer family: grouping, exact algorithms, state round trip, bad input, debug checks.

StandInGPT has the parameter names of model/gpt.py (the grouping contract) without importing it.
"""

import copy
import functools
import io
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import optim.groups
from optim import OPTIMIZERS, AdamW, Aurora, MatrixOptimizer, Muon, NorMuon, UNorMuon, build_optimizer, polar
from optim.aurora import aurora_polar
from optim.polar import ns_dtype
from train.config import compose_config

NAMES = tuple(OPTIMIZERS)


class _Gain(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))


class _MLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d)


class _Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.attn_norm, self.attn = _Gain(d), _Attention(d)
        self.mlp_norm, self.mlp = _Gain(d), _MLP(d, hidden)


class StandInGPT(nn.Module):
    """The parameter names and shapes of model/gpt.py at toy size (a vocab that does not
    divide by 2, to exercise uneven FSDP shards)."""

    def __init__(self, vocab=51, d=16, hidden=48, layers=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.embed_norm = _Gain(d)
        self.blocks = nn.ModuleList(_Block(d, hidden) for _ in range(layers))
        self.final_norm = _Gain(d)
        self.lm_head = nn.Linear(d, vocab)


@functools.cache
def composed_optim(name):
    return compose_config([f"optim={name}"])["optim"]


def load_config(name, **matrix_overrides):
    cfg = OmegaConf.create(composed_optim(name))  # a copy: the tests change it
    for key, value in matrix_overrides.items():
        cfg.matrix[key] = value
    return cfg


def fake_gradients(model, step):
    """Deterministic gradients per step, with row scales spread like real MLP gradients."""
    generator = torch.Generator().manual_seed(1000 + step)
    for param in model.parameters():
        grad = torch.randn(param.shape, generator=generator)
        if param.ndim == 2:
            grad = grad * torch.exp(torch.randn(param.shape[0], 1, generator=generator))
        param.grad = grad


def train(model, optimizer, steps, first_step=0):
    for step in range(first_step, first_step + steps):
        fake_gradients(model, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# --- grouping -----------------------------------------------------------------------------


def test_build_optimizer_claims_every_parameter_exactly_once_by_the_rules():
    model = StandInGPT()
    optimizer = build_optimizer(load_config("aurora"), model)
    group_of = {name: g["name"] for g in optimizer.param_groups for name in g["param_names"]}
    all_names = [name for name, _ in model.named_parameters()]
    assert sorted(group_of) == sorted(all_names)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(all_names)
    assert group_of["embed.weight"] == "embed"
    assert group_of["lm_head.weight"] == group_of["lm_head.bias"] == "head"
    for name in ("attn.q.weight", "attn.out.weight", "mlp.up.weight", "mlp.gate.weight", "mlp.down.weight"):
        assert group_of[f"blocks.1.{name}"] == "matrix"
    for name in ("embed_norm.weight", "final_norm.weight", "blocks.0.attn_norm.weight", "blocks.0.mlp.up.bias"):
        assert group_of[name] == "scalar"


def test_build_optimizer_takes_per_group_settings_from_config():
    groups = {g["name"]: g for g in build_optimizer(load_config("muon"), StandInGPT()).param_groups}
    assert groups["matrix"]["kind"] == "matrix" and groups["matrix"]["lr"] == 0.025
    assert groups["matrix"]["weight_decay"] == 0.05 and groups["matrix"]["ns_steps"] == 12
    assert groups["embed"]["lr"] == 0.7 and groups["head"]["lr"] == 0.004 and groups["scalar"]["lr"] == 0.015
    for name in ("embed", "head", "scalar"):
        assert groups[name]["kind"] == "adamw"
        assert groups[name]["betas"] == (0.8, 0.95) and groups[name]["eps"] == 1e-10
        assert groups[name]["weight_decay"] == 0.001


def test_adamw_config_puts_the_hidden_matrices_in_an_adamw_group():
    optimizer = build_optimizer(load_config("adamw"), StandInGPT())
    assert isinstance(optimizer, AdamW)
    assert {g["name"]: g["kind"] for g in optimizer.param_groups}["matrix"] == "adamw"


@pytest.mark.parametrize("name", NAMES)
def test_every_config_builds_its_optimizer_from_a_dictconfig_or_a_plain_dict(name):
    cfg = load_config(name)
    assert cfg.name == name
    from_dictconfig = build_optimizer(cfg, StandInGPT())
    from_dict = build_optimizer(OmegaConf.to_container(cfg), StandInGPT())
    assert type(from_dictconfig) is type(from_dict) is OPTIMIZERS[name][0]
    assert from_dictconfig.param_groups[0].keys() == from_dict.param_groups[0].keys()


def test_an_unclaimed_parameter_is_named_in_the_error():
    model = StandInGPT()
    model.blocks[0].mlp.experts = nn.Parameter(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.experts"):
        build_optimizer(load_config("muon"), model)
    model = StandInGPT()
    model.pos_embed = nn.Parameter(torch.zeros(8, 16))
    with pytest.raises(ValueError, match="pos_embed"):
        build_optimizer(load_config("muon"), model)


def test_a_doubly_claimed_parameter_is_named_in_the_error(monkeypatch):
    overlapping = optim.groups.GROUP_RULES + (optim.groups.GroupRule("scalar", lambda name, p: name == "embed.weight"),)
    monkeypatch.setattr(optim.groups, "GROUP_RULES", overlapping)
    with pytest.raises(ValueError, match="embed.weight"):
        optim.groups.assign_groups(StandInGPT())


def test_frozen_parameters_are_left_out():
    model = StandInGPT()
    model.embed.weight.requires_grad_(False)
    optimizer = build_optimizer(load_config("muon"), model)
    assert all("embed.weight" not in g["param_names"] for g in optimizer.param_groups)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"name": "sgd"}, "optim.name"),
        ({"matrix_typo": {}}, "unknown keys"),
        ({"embed": {"lr": 0.1, "momentum": 0.9}}, "momentum"),
        ({"name": "riemannian_aurora"}, "variant"),  # aurora.yaml says variant: vanilla
    ],
)
def test_build_optimizer_rejects_inconsistent_configs(change, match):
    cfg = OmegaConf.to_container(load_config("aurora"))
    cfg.update(change)
    with pytest.raises(ValueError, match=match):
        build_optimizer(cfg, StandInGPT())


# --- the algorithms ---------------------------------------------------------------------------


def matrices(seed=0):
    torch.manual_seed(seed)
    return [nn.Parameter(torch.randn(*shape) * 0.1) for shape in ((24, 8), (24, 8), (8, 24), (12, 12))]


def step_with_gradients(params, optimizer, steps):
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        for p in params:
            noise = torch.randn(p.shape, generator=generator)
            p.grad = noise * torch.exp(torch.randn(p.shape[0], 1, generator=generator))
        optimizer.step()


@pytest.mark.parametrize("lr_scale", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_optim_muon(lr_scale, nesterov):
    ours, theirs = matrices(), matrices()
    settings = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    # torch.optim.Muon iterates in bf16 on every device.
    muon = Muon(ours, ns_method="quintic", ns_steps=5, ns_dtype="bfloat16", lr_scale=lr_scale, **settings)
    step_with_gradients(ours, muon, 4)
    step_with_gradients(theirs, torch.optim.Muon(theirs, ns_steps=5, adjust_lr_fn=lr_scale, **settings), 4)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)  # same arithmetic in the same order: bit-identical


def test_adamw_groups_equal_torch_optim_adamw():
    ours, theirs = matrices(), matrices()
    settings = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.01)
    step_with_gradients(ours, Muon([{"params": ours, "kind": "adamw", **settings}]), 4)
    step_with_gradients(theirs, torch.optim.AdamW(theirs, foreach=False, **settings), 4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def normuon_reference(params, steps, lr, wd, mu, beta2, eps, tall_rows_to_sqrt_n_over_m):
    """NorMuon (arXiv 2510.05491) and U-NorMuon transcribed one matrix at a time from their update rules."""
    momentum = [torch.zeros_like(p) for p in params]
    v = [torch.zeros(p.shape[0], 1) for p in params]
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=generator) * torch.exp(torch.randn(p.shape[0], 1, generator=generator))
            momentum[i] = mu * momentum[i] + (1 - mu) * g
            O = polar((1 - mu) * g + mu * momentum[i])
            v[i] = beta2 * v[i] + (1 - beta2) * (O**2).mean(dim=1, keepdim=True)
            O_hat = O / (v[i].sqrt() + eps)
            O_hat = O_hat * O.norm() / (O_hat.norm() + eps)
            rows, cols = p.shape
            update = O_hat * math.sqrt(max(1, rows / cols))
            if tall_rows_to_sqrt_n_over_m:
                update = update * math.sqrt(min(1, cols / rows))
            with torch.no_grad():
                p.mul_(1 - lr * wd).sub_(lr * update)


@pytest.mark.parametrize("cls", [NorMuon, UNorMuon])
def test_normuon_and_unormuon_equal_a_direct_transcription(cls):
    ours, reference = matrices(), matrices()
    settings = dict(lr=0.02, weight_decay=0.05, momentum=0.95, beta2=0.95, eps=1e-10)
    step_with_gradients(ours, cls(ours, **settings), 3)
    normuon_reference(reference, 3, 0.02, 0.05, 0.95, 0.95, 1e-10, cls is UNorMuon)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_unormuon_tall_rows_have_norm_sqrt_n_over_m_per_unit_lr():
    (p,) = params = [nn.Parameter(torch.zeros(32, 8))]
    step_with_gradients(params, UNorMuon(params, lr=1.0, weight_decay=0.0, beta2=0.0), 1)
    row_norms = p.detach().norm(dim=1)
    torch.testing.assert_close(row_norms, torch.full((32,), math.sqrt(8 / 32)), rtol=0.02, atol=0)


@pytest.mark.parametrize("apply_to", ["tall", "wide", "rectangular"])
def test_aurora_applies_the_aurora_rule_to_the_right_shapes(apply_to):
    ours, muon = matrices(), matrices()
    lr = 0.02
    step_with_gradients(ours, Aurora(ours, lr=lr, weight_decay=0.0, apply_to=apply_to), 1)
    step_with_gradients(muon, Muon(muon, lr=lr, weight_decay=0.0), 1)
    originals = matrices()
    generator = torch.Generator().manual_seed(0)
    for p, m, original in zip(ours, muon, originals):
        g = torch.randn(p.shape, generator=generator) * torch.exp(torch.randn(p.shape[0], 1, generator=generator))
        rows, cols = p.shape
        if rows != cols and apply_to in ("rectangular", "tall" if rows > cols else "wide"):
            # Nesterov after one step from zero momentum: X = (1 − μ)G + μ(1 − μ)G.
            expected = original - lr * math.sqrt(max(1, rows / cols)) * aurora_polar((1 - 0.95**2) * g)
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(p, m)


EXACT_LEVERAGE = {"pp_leverage": "exact", "pp_iterations": 3}  # conf/optim/aurora_leverage.yaml


@pytest.mark.parametrize("rule, polar_calls", [({}, 2), (EXACT_LEVERAGE, 1)])
def test_aurora_with_exact_leverage_runs_one_polar_on_the_tall_stack(monkeypatch, rule, polar_calls):
    calls = []
    monkeypatch.setattr("optim.aurora.polar", lambda X, *args: calls.append(tuple(X.shape)) or polar(X, *args))
    params = matrices()  # the two tall 24×8 matrices make one stack
    step_with_gradients(params, Aurora(params, **rule), 1)
    assert calls == [(2, 24, 8)] * polar_calls


def test_lr_comes_from_the_param_group_so_lambdalr_schedules_it():
    model = StandInGPT()
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(load_config("aurora"), model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)
    train(model, optimizer, 2)
    scheduler.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_step_never_reads_tensor_values_on_the_host(monkeypatch):
    """No .item()/bool()/float() on a tensor inside step(): no host-device synchronisation."""
    configs = {
        **{name: load_config(name) for name in NAMES},
        "aurora_leverage": load_config("aurora", **EXACT_LEVERAGE),
    }
    models = {name: StandInGPT() for name in configs}
    optimizers = {name: build_optimizer(configs[name], models[name]) for name in configs}

    def forbidden(*args, **kwargs):
        raise AssertionError("step() read a tensor value on the host")

    for model in models.values():
        fake_gradients(model, 0)
    for attribute in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attribute, forbidden)
    for optimizer in optimizers.values():
        optimizer.step()


def test_compile_flag_traces_the_update_direction_and_changes_nothing(monkeypatch):
    # aot_eager traces with dynamo/AOT like inductor but skips C++ codegen (20+ s on this CPU).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled, plain = matrices()[1:], matrices()[1:]  # a tall (Aurora), a wide and a square matrix
    step_with_gradients(compiled, Aurora(compiled, compile=True), 2)
    step_with_gradients(plain, Aurora(plain), 2)
    for a, b in zip(compiled, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# --- state round trip ----------------------------------------------------------------------------


ROUND_TRIP_CASES = [
    *((name, {}) for name in NAMES),
    ("aurora", {"pp_warm_start": True, "pp_iterations": 1}),
    ("muon", {"recycle_after": 1, "recycle_below": 0.5}),  # weak units recycled on every step: the draws resume
]


@pytest.mark.parametrize("name, overrides", ROUND_TRIP_CASES)
def test_state_dict_round_trip_continues_bit_identically(name, overrides):
    cfg = load_config(name, **overrides)
    uninterrupted = StandInGPT()
    train(uninterrupted, build_optimizer(cfg, uninterrupted), 4)

    first = StandInGPT()
    optimizer = build_optimizer(cfg, first)
    train(first, optimizer, 2)
    checkpoint = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": optimizer.state_dict()}, checkpoint)
    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=True)

    resumed = StandInGPT(seed=123)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build_optimizer(cfg, resumed)
    resumed_optimizer.load_state_dict(saved["optim"])
    train(resumed, resumed_optimizer, 2, first_step=2)
    for (param_name, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), param_name


# --- bad input and the debug flag ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, argument",
    [
        (Muon, {"lr": -1.0}, "lr"),
        (Muon, {"momentum": 1.0}, "momentum"),
        (Muon, {"nesterov": "yes"}, "nesterov"),
        (Muon, {"weight_decay": -0.1}, "weight_decay"),
        (Muon, {"ns_method": "newton"}, "ns_method"),
        (Muon, {"ns_steps": 0}, "ns_steps"),
        (Muon, {"ns_dtype": "float16"}, "ns_dtype"),
        (Muon, {"lr_scale": "none"}, "lr_scale"),
        (Muon, {"debug": 1}, "debug"),
        (Muon, {"recycle_after": -1}, "recycle_after"),
        (Muon, {"recycle_after": 2.0}, "recycle_after"),
        (Muon, {"recycle_below": 1.0}, "recycle_below"),
        (NorMuon, {"beta2": 1.5}, "beta2"),
        (NorMuon, {"eps": -1.0}, "eps"),
        (Aurora, {"variant": "fancy"}, "variant"),
        (Aurora, {"apply_to": "square"}, "apply_to"),
        (Aurora, {"pp_iterations": 0}, "pp_iterations"),
        (Aurora, {"pp_beta": -0.5}, "pp_beta"),
        (Aurora, {"pp_warm_start": 1}, "pp_warm_start"),
        (Aurora, {"pp_leverage": "svd"}, "pp_leverage"),
        (Aurora, {"riemannian_step_size": 0.0}, "riemannian_step_size"),
        (AdamW, {"betas": (0.9, 1.0)}, "betas"),
        (AdamW, {"eps": -1e-8}, "eps"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(matrices(), **kwargs)


def test_adamw_group_without_lr_is_refused():
    with pytest.raises(ValueError, match="lr"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "kind": "adamw"}])


def test_a_matrix_optimizer_refuses_a_parameter_that_is_not_2d_and_names_it():
    model = StandInGPT()
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.up\.bias"):
        Aurora([(name, p) for name, p in model.named_parameters() if name.startswith("blocks.0.mlp.up.")])


@pytest.mark.parametrize("where", ["gradient", "update"])
def test_debug_flag_names_the_parameter_with_a_non_finite_value_and_changes_nothing(where):
    model = StandInGPT()
    optimizer = build_optimizer(OmegaConf.merge(load_config("aurora"), {"debug": True}), model)
    train(model, optimizer, 1)
    before = copy.deepcopy(model.state_dict())
    fake_gradients(model, 1)
    target = model.blocks[1].mlp.up.weight
    if where == "gradient":
        target.grad[3, 2] = float("nan")
    else:  # a finite gradient whose momentum has gone bad
        optimizer.state[target]["momentum_buffer"][0, 0] = float("inf")
    with pytest.raises(RuntimeError, match=rf"non-finite {where} for blocks\.1\.mlp\.up\.weight"):
        optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_captured_updates_are_the_applied_directions_and_change_nothing():
    plain, capturing = StandInGPT(), StandInGPT()
    capturing.load_state_dict(plain.state_dict())
    before = {name: p.detach().clone() for name, p in capturing.named_parameters()}
    optimizers = [build_optimizer(load_config("muon", weight_decay=0.0), m) for m in (plain, capturing)]
    optimizers[1].captured_updates = {}
    for model, optimizer in zip((plain, capturing), optimizers):
        train(model, optimizer, 1)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), capturing.parameters()))
    captured = optimizers[1].captured_updates
    assert sorted(captured) == sorted(name for name, _ in capturing.named_parameters())
    up = dict(capturing.named_parameters())["blocks.0.mlp.up.weight"]
    group = next(g for g in optimizers[1].param_groups if g["name"] == "matrix")
    step = group["lr"] * math.sqrt(up.shape[0] / up.shape[1])
    assert torch.allclose(before["blocks.0.mlp.up.weight"] - step * captured["blocks.0.mlp.up.weight"], up)


def test_normuon_normalizing_neurons_treats_a_wide_matrix_as_its_transpose():
    torch.manual_seed(0)
    wide = nn.Parameter(torch.randn(8, 24) * 0.1)
    tall = nn.Parameter(wide.detach().T.clone())
    by_neurons = NorMuon([("wide", wide)], lr=0.02, weight_decay=0.0, normalize="neurons")
    by_rows = NorMuon([("tall", tall)], lr=0.02, weight_decay=0.0, normalize="rows")
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        g = torch.randn(8, 24, generator=generator)
        wide.grad, tall.grad = g.clone(), g.T.clone()
        by_neurons.captured_updates, by_rows.captured_updates = {}, {}
        by_neurons.step()
        by_rows.step()
    assert by_neurons.state[wide]["row_second_moment"].shape == (1, 24)  # one per hidden unit
    [wide_update], [tall_update] = by_neurons.captured_updates.values(), by_rows.captured_updates.values()
    torch.testing.assert_close(wide_update, tall_update.T)  # the same update per hidden unit


# --- recycling dead units (recycle_after, a step hook of every matrix optimizer: optim/recycle.py) ---


def tiny_gpt():
    from model import build_model

    torch.manual_seed(0)
    return build_model(dict(vocab_size=64, n_layer=2, n_head=2, head_dim=8, d_model=16, mlp_expansion=4))


def block_matrices(model):
    """(name, parameter) of every 2-D parameter in the blocks: a matrix group, as a user builds one."""
    return [(name, p) for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2]


def gpt_with_aurora(**matrix):
    model = tiny_gpt()
    return model, build_optimizer(load_config("aurora", **matrix), model)


def train_with_silent_units(model, optimizer, steps, silent=3, scale=0.0):
    """Steps on random tokens in which the first `silent` units of block 0 get no gradient (or
    their gradient times `scale`: weak units)."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        tokens = torch.randint(0, 64, (4, 17), generator=generator)
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        model.blocks[0].mlp.up.weight.grad[:silent] *= scale
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_a_unit_silent_for_k_steps_is_recycled_without_changing_the_function():
    model, optimizer = gpt_with_aurora(recycle_after=1000)  # on, but not due during these steps
    train_with_silent_units(model, optimizer, 5)
    up, down = model.blocks[0].mlp.up.weight, model.blocks[0].mlp.down.weight
    with torch.no_grad():  # make the three units dead, as their silence says: zero pre-activation, zero output
        up[:3] = 0.0
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(9))
    before = model(tokens)
    group = optimizer.param_groups[0]
    optimizer.state[up]["zero_grad_steps"][:3] = optimizer.recycling.after
    model(tokens[:, :-1], tokens[:, 1:]).backward()
    optimizer.recycling.recycle(optimizer, group, step=1)
    assert torch.equal(model(tokens), before)  # silent units with zeroed output columns: the same function
    norms = up.detach().norm(dim=1)
    assert torch.allclose(norms[:3], norms.median().expand(3), rtol=1e-5)  # fresh rows of the median norm
    assert not down[:, :3].any() and not optimizer.state[up]["momentum_buffer"][:3].any()
    assert not optimizer.state[down]["momentum_buffer"][:, :3].any()
    assert optimizer.state[up]["zero_grad_steps"][:3].tolist() == [0, 0, 0] and optimizer.recycled_units().item() == 3


def test_recycling_is_deterministic_and_counts_only_silent_units():
    runs = []
    for _ in range(2):
        model, optimizer = gpt_with_aurora(recycle_after=2)
        train_with_silent_units(model, optimizer, 6)
        runs.append((model.blocks[0].mlp.up.weight.detach().clone(), optimizer.recycled_units().item()))
    assert torch.equal(runs[0][0], runs[1][0])
    # step 1 has no up-gradient anywhere (zero-initialised down-projections): it counts for nothing;
    # then the three silent units are due every second step: steps 3 and 5
    assert runs[0][1] == 6


def test_with_recycle_below_weak_units_are_recycled_too():
    model, optimizer = gpt_with_aurora(recycle_after=2)
    train_with_silent_units(model, optimizer, 6, scale=1e-4)  # weak, not silent: never recycled
    assert optimizer.recycled_units().item() == 0
    model, optimizer = gpt_with_aurora(recycle_after=2, recycle_below=0.01)
    train_with_silent_units(model, optimizer, 6, scale=1e-4)
    assert optimizer.recycled_units().item() == 6  # due at steps 3 and 5, as silent ones


def test_muon_with_recycle_after_recycles_a_silent_unit():
    model = tiny_gpt()
    optimizer = build_optimizer(load_config("muon", recycle_after=2), model)
    train_with_silent_units(model, optimizer, 3, silent=1)
    # step 1 counts for nothing (no up-gradient anywhere); the unit is silent at steps 2 and 3
    assert optimizer.recycled_units().item() == 1
    assert not model.blocks[0].mlp.down.weight[:, 0].any()


class NormalisedMomentum(MatrixOptimizer):
    """A user's matrix rule: its own update direction, and no code for recycling."""

    def update_direction(self, X, group, state):
        return X / X.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-12), state


def test_a_users_matrix_rule_recycles_with_no_code_of_its_own():
    model = tiny_gpt()
    optimizer = NormalisedMomentum(block_matrices(model), recycle_after=2)
    train_with_silent_units(model, optimizer, 3)
    assert optimizer.recycled_units().item() == 3
    assert not model.blocks[0].mlp.down.weight[:, :3].any()


class StepAfterParent(Muon):
    """A user's subclass whose step calls its parent's."""

    def step(self, closure=None):
        return super().step(closure)


def test_a_subclass_whose_step_calls_its_parents_recycles_once_a_step():
    model = tiny_gpt()
    build_optimizer(load_config("muon"), model)  # making a Muon wraps Muon.step for torch's step hooks
    optimizer = StepAfterParent(block_matrices(model), recycle_after=2)
    train_with_silent_units(model, optimizer, 3)
    assert optimizer.param_groups[0]["recycle_steps"] == 3 and optimizer.recycled_units().item() == 3


def test_only_a_group_that_recycles_carries_a_recycle_step():
    # A checkpoint loads into the keys of the optimizer's own state dict (DCP): a group key that
    # checkpoints without recycling lack (Muon's, from before recycling was every optimizer's) refuses them.
    for name in ("muon", "aurora"):
        for options in ({}, {"recycle_after": 2}):
            optimizer = build_optimizer(load_config(name, **options), StandInGPT())
            recycling = [group["name"] for group in optimizer.param_groups if "recycle_steps" in group]
            assert recycling == (["matrix"] if options else []), (name, options)


def test_recycling_is_refused_without_the_mlps_names():
    params = [nn.Parameter(torch.randn(8, 4))]
    with pytest.raises(ValueError, match="recycle_after needs the MLP's up and down projections by name"):
        Aurora(params, recycle_after=2)


def test_ns_dtype_auto_is_float32_on_a_cpu_and_bfloat16_on_cuda():
    assert ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert ns_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # an explicit dtype wins
    runs = {}
    for setting in ("auto", "float32", "bfloat16"):
        params = matrices()
        optimizer = Muon(params, ns_dtype=setting)
        step_with_gradients(params, optimizer, 2)
        runs[setting] = params
        assert optimizer.ns_dtype_used(torch.device("cpu")) == ("float32" if setting == "auto" else setting)
    assert all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["float32"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["bfloat16"]))
