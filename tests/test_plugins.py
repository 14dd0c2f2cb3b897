"""Optimizers brought from outside the package (optim._target_): a matrix rule, any torch
optimizer on every group or on the matrix group alone, a config folder of the user's own, and the
one-line refusals. Their state round trips and resumes are python -m optim.check's rows
(tests/test_optim_check.py: torch.optim.AdamW, and SGD on the matrices with AdamW on the rest)."""

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from optim import AdamW, build_optimizer
from optim.build import import_optimizer_class
from optim.split import SplitOptimizer
from tests.test_optimizers import StandInGPT, train

REPO = Path(__file__).resolve().parents[1]
ADAMW_GROUP = {"lr": 0.01, "betas": [0.8, 0.95], "eps": 1e-10, "weight_decay": 0.001}
RULE_MODULE = '''
import torch
from optim.matrix import MatrixOptimizer


class RowNormalized(MatrixOptimizer):
    """Each row of the momentum scaled to unit RMS: a matrix rule that is not in the package."""

    def update_direction(self, X, group, state):
        return X / X.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12), state
'''


def plugin_config(target, matrix, **top):
    groups = {section: dict(ADAMW_GROUP) for section in ("embed", "head", "scalar")}
    return {"name": "mine", "_target_": target, "matrix": matrix, **groups, **top}


@pytest.fixture
def rule_module(tmp_path, monkeypatch):
    """A module outside the repository, importable the way a user's would be (PYTHONPATH)."""
    (tmp_path / "my_rules.py").write_text(textwrap.dedent(RULE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rules.RowNormalized"
    sys.modules.pop("my_rules", None)


def claimed(optimizer):
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def test_a_matrix_rule_from_outside_gets_momentum_groups_and_adamw_like_a_built_in(rule_module):
    model = StandInGPT()
    optimizer = build_optimizer(plugin_config(rule_module, {"lr": 0.02, "momentum": 0.9}), model)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert type(optimizer).__name__ == "RowNormalized"
    assert groups["matrix"]["momentum"] == 0.9 and groups["matrix"]["nesterov"] is True  # inherited default
    assert groups["embed"]["kind"] == "adamw" and groups["embed"]["lr"] == 0.01
    assert sorted(claimed(optimizer)) == sorted(id(p) for p in model.parameters())
    before = model.blocks[0].mlp.up.weight.detach().clone()
    train(model, optimizer, 1)
    change = (model.blocks[0].mlp.up.weight - before) / 0.02
    # unit-RMS rows (the rule's) times the inherited per-shape lr scale sqrt(48 / 16), squared
    assert torch.allclose(change.pow(2).mean(dim=1), torch.full((48,), 3.0), rtol=1e-4)


def test_a_torch_optimizer_takes_the_four_named_groups_with_their_sections_options():
    model = StandInGPT()
    cfg = plugin_config("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9})
    cfg.update(embed={"lr": 0.5}, head={"lr": 0.2, "momentum": 0.5}, scalar={"lr": 0.3})
    optimizer = build_optimizer(cfg, model)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert type(optimizer) is torch.optim.SGD
    assert [group["name"] for group in optimizer.param_groups] == ["matrix", "embed", "head", "scalar"]
    assert (groups["matrix"]["lr"], groups["embed"]["lr"], groups["head"]["momentum"]) == (0.1, 0.5, 0.5)
    assert groups["embed"]["momentum"] == 0.9  # the matrix section's options are the constructor's defaults
    assert sorted(claimed(optimizer)) == sorted(id(p) for p in model.parameters())


def test_takes_matrix_gives_the_matrix_group_to_the_plugin_and_the_rest_to_adamw():
    model = StandInGPT()
    optimizer = build_optimizer(plugin_config("torch.optim.Adam", {"lr": 0.003}, takes="matrix"), model)
    assert isinstance(optimizer, SplitOptimizer)
    plugin, rest = optimizer.parts
    assert type(plugin) is torch.optim.Adam and [g["name"] for g in plugin.param_groups] == ["matrix"]
    assert type(rest) is AdamW and [g["name"] for g in rest.param_groups] == ["embed", "head", "scalar"]
    assert sorted(claimed(optimizer)) == sorted(id(p) for p in model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # the harness's schedule scales both
    assert (plugin.param_groups[0]["lr"], rest.param_groups[0]["lr"]) == (0.0015, 0.005)
    del scheduler


@pytest.mark.parametrize(
    "target, matrix, top, match",
    [
        (
            "no_such_module.Opt",
            {},
            {},
            r"optim._target_: cannot import 'no_such_module.Opt' \(ModuleNotFoundError: No module named "
            r"'no_such_module'\); put its folder on PYTHONPATH",
        ),
        ("torch.optim.NoSuchOptimizer", {}, {}, r"module torch.optim has no 'NoSuchOptimizer'"),
        ("collections.OrderedDict", {}, {}, r"collections.OrderedDict is not a torch.optim.Optimizer subclass"),
        ("SGD", {}, {}, r"optim._target_ must be an import path"),
        (".relative.Opt", {}, {}, r"optim._target_ must be an import path such as my_package.my_module.MyOptimizer"),
        ("torch.optim.SGD", {"lr": 0.1, "betaz": 0.9}, {}, r"optim.matrix.betaz is not an argument of torch.optim.SGD"),
        ("torch.optim.SGD", {"lr": 0.1}, {"takes": "embed"}, r"optim.takes must be one of \('all', 'matrix'\)"),
        ("torch.optim.SGD", {"lr": 0.1}, {"name": "muon"}, r"optim.name=muon is a built-in optimizer's name"),
        ("torch.optim.SGD", {"lr": 0.1}, {"name": "my opt/1"}, r"optim.name must label a plug-in's runs"),
        ("torch.optim.SGD", {"lr": -1.0}, {}, r"torch.optim.SGD refused the options of optim.matrix/embed"),
        (
            "torch.optim.SGD",
            {"lr": 0.1},
            {"compile": True},
            r"optim.compile and optim.debug apply to matrix optimizers",
        ),
    ],
)
def test_a_bad_plugin_config_is_one_error_naming_what_to_fix(target, matrix, top, match):
    cfg = plugin_config(target, matrix, **top)
    if "SGD" in target and "takes" not in top:
        cfg.update({section: {"lr": 0.1} for section in ("embed", "head", "scalar")})
    with pytest.raises(ValueError, match=match):
        build_optimizer(cfg, StandInGPT())


@pytest.mark.parametrize("path", ["no_such_module.Thing", "torch.optim.NoSuchThing"])
def test_an_optimizer_path_and_an_observer_path_are_refused_in_the_same_words(path):
    # one resolver (optim/imports.py) for both kinds of plug-in: only the config key differs
    from train.config import ConfigError
    from train.observers import observer_class

    with pytest.raises(ValueError) as optimizer:
        import_optimizer_class(path)
    with pytest.raises(ConfigError) as observer:
        observer_class("mine", path)
    assert str(optimizer.value).replace("optim._target_", "observers.mine") == str(observer.value)
    assert len(str(observer.value).splitlines()) == 1


@pytest.mark.parametrize(
    "matrix, top, match",
    [
        ({"lr": 0.02, "beta2": 0.9}, {}, r"optim.matrix.beta2 is not an option of mine; remove it"),
        ({"lr": 0.02}, {"takes": "matrix"}, r"optim.takes applies to optimizers that are not matrix rules"),
    ],
)
def test_a_matrix_rule_refuses_an_option_it_does_not_take(rule_module, matrix, top, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(plugin_config(rule_module, matrix, **top), StandInGPT())


def test_an_unknown_name_without_a_target_points_to_the_plugin_path():
    with pytest.raises(ValueError, match=r"optim.name must be one of .* names its class in optim._target_"):
        build_optimizer({**plugin_config(None, {}), "_target_": None, "name": "mine"}, StandInGPT())


# --- a user's own config folder: python -m train --config-dir DIR optim=NAME ------------------------------

RULE_CONFIG = """\
defaults:
  - /optim_defaults/adamw_groups@_here_
  - _self_
name: row_normalized
_target_: my_rules.RowNormalized
search:
  matrix.lr: {low: 0.001, high: 0.1, log: true}
matrix:
  lr: 0.02
"""


@pytest.fixture
def user_config_dir(tmp_path, rule_module):
    """A config folder outside the package, with an optimizer config of the user's own."""
    folder = tmp_path / "my_conf"
    (folder / "optim").mkdir(parents=True)
    (folder / "optim" / "row_normalized.yaml").write_text(RULE_CONFIG)
    return folder


def test_a_searchpath_folder_adds_its_options_and_keys_to_the_checks(user_config_dir):
    from train.config import ConfigError, compose_config

    searchpath = f"hydra.searchpath=[file://{user_config_dir}]"
    cfg = compose_config([searchpath, "optim=row_normalized", "optim.matrix.lr=0.03"])
    assert (cfg["optim"]["_target_"], cfg["optim"]["matrix"]["lr"], cfg["optim"]["embed"]["lr"]) == (
        "my_rules.RowNormalized",
        0.03,
        0.7,  # the shared AdamW groups, as for a built-in
    )
    with pytest.raises(ConfigError, match=r"optim=row_normalized: no such option; optim options are adam_mini, adamw"):
        compose_config(["optim=row_normalized"])  # without the folder the option does not exist
    with pytest.raises(
        ConfigError, match=rf"unknown config key 'optim.matrix.lrr' .*no file in conf/, {user_config_dir}"
    ):
        compose_config([searchpath, "optim=row_normalized", "optim.matrix.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"hydra.searchpath: 'file:///no/such/folder' is not a folder"):
        compose_config(["hydra.searchpath=[file:///no/such/folder]"])


def test_a_users_own_optim_option_gets_its_own_run_directory_by_its_file_name(user_config_dir):
    from train.config import compose_config, with_config_dir

    variant = "defaults:\n  - row_normalized\n  - _self_\nmatrix:\n  lr: 0.05\n"  # keeps name row_normalized
    (user_config_dir / "optim" / "row_normalized_fast.yaml").write_text(variant)
    for option in ("row_normalized", "row_normalized_fast"):
        cfg = compose_config(with_config_dir([f"optim={option}"], str(user_config_dir)))  # as --config-dir
        assert (cfg["optim"]["name"], cfg["out_dir"]) == ("row_normalized", f"runs/tiny-{option}-seed0")


def test_with_config_dir_adds_the_folder_to_the_searchpath():
    from train.config import with_config_dir

    assert with_config_dir(["seed=1"], "/a") == ["seed=1", "hydra.searchpath=[file:///a]"]
    assert with_config_dir(["hydra.searchpath=[file:///b]", "seed=1"], "/a") == [
        "seed=1",
        "hydra.searchpath=[file:///b,file:///a]",
    ]


def test_a_plugin_trains_from_the_command_line_with_no_edit_to_the_package(micro_shards, user_config_dir, tmp_path):
    import subprocess

    from tests.conftest import micro_overrides
    from train.metrics import read_metrics
    from train.rundir import read_launches

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "train",
        "--config-dir",
        str(user_config_dir),
        "optim=row_normalized",
        *micro_overrides(micro_shards, f"out_dir={out}", "train.steps=4"),
    ]
    env = {**os.environ, "PYTHONPATH": f"{user_config_dir.parent}:{REPO}"}  # the module as a user's would be
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [record["step"] for record in read_metrics(out) if "train_loss" in record][-1] == 4
    (launch,) = read_launches(out / "launches.jsonl")
    assert launch["ns_dtype"] == "float32"  # a matrix rule runs the polar settings it inherits
    config = (out / "config.yaml").read_text()
    assert "_target_: my_rules.RowNormalized" in config and "name: row_normalized" in config


def test_tuning_reads_a_plugins_search_space_like_a_built_ins(user_config_dir):
    from eval.tuning import search_space

    searchpath = f"hydra.searchpath=[file://{user_config_dir}]"
    assert search_space("row_normalized", [searchpath]) == {"matrix.lr": {"low": 0.001, "high": 0.1, "log": True}}
