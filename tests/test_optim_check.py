"""python -m optim.check: every built-in and every conf/optim config passes it, and each check
fails on an optimizer that breaks its promise (tests/broken_optimizers.py)."""

import pytest

from optim.check import main, run_checks
from train.config import group_options

BROKEN = "tests.broken_optimizers."
# broken optimizer -> the check that must catch it
CAUGHT_BY = {
    "DropsGroups": "claims",
    "ForgetsState": "round trip",
    "IgnoresSchedule": "lr schedule",
    "NormalizedWithoutEpsilon": "finite",
    "TakesAnything": "unknown",
    "ClockDependent": "seed",
    "RankDependent": "2 ranks",
    "PlainTensorMomentum": "FSDP2",
}
CHECKS = ("claims", "round trip", "resume", "finite", "seed", "lr schedule", "unknown", "2 ranks", "FSDP2")


# A user's config of a torch optimizer on the matrices alone, AdamW on the rest (optim/build.py)
USER_CONFIG = """\
defaults:
  - /optim_defaults/adamw_groups@_here_
  - _self_
name: sgd_on_matrices
_target_: torch.optim.SGD
takes: matrix
matrix: {lr: 0.05, momentum: 0.9}
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{(optimizer, check): Outcome} for every config option, the broken optimizers, a torch
    optimizer, one refusing FSDP2 and a config in a user's folder: one run, one 2-rank spawn."""
    folder = tmp_path_factory.mktemp("my_conf")
    (folder / "optim").mkdir()
    (folder / "optim" / "sgd_on_matrices.yaml").write_text(USER_CONFIG)
    specs = [
        *group_options("optim"),
        *(BROKEN + name for name in CAUGHT_BY),
        BROKEN + "PlainTensorMomentumNoFsdp",
        "torch.optim.AdamW",
        "sgd_on_matrices",
    ]
    return {(spec, check): outcome for spec, check, outcome in run_checks(specs, str(folder))}


@pytest.mark.parametrize("name", group_options("optim"))
def test_every_optim_config_passes_every_check(outcomes, name):
    failed = {check: outcomes[(name, check)].detail for check in CHECKS if not outcomes[(name, check)].passed}
    assert not failed


@pytest.mark.parametrize("spec", ["torch.optim.AdamW", "sgd_on_matrices"])
def test_a_torch_optimizer_passes_with_no_edit_to_the_package(outcomes, spec):
    assert all(outcomes[(spec, check)].passed for check in CHECKS)


@pytest.mark.parametrize("name, check", CAUGHT_BY.items())
def test_each_check_fails_on_an_optimizer_that_breaks_its_promise(outcomes, name, check):
    assert not outcomes[(BROKEN + name, check)].passed


def test_the_broken_optimizers_fail_only_where_they_break_something(outcomes):
    # the promises a broken optimizer keeps still pass, so a check that fails everything is caught
    for name, check in (("DropsGroups", "finite"), ("TakesAnything", "round trip"), ("RankDependent", "seed")):
        assert outcomes[(BROKEN + name, check)].passed, (name, check)


def test_an_optimizer_that_refuses_fsdp2_passes_with_the_refusal(outcomes):
    outcome = outcomes[(BROKEN + "PlainTensorMomentumNoFsdp", "FSDP2")]
    assert outcome.passed and "does not support FSDP2" in outcome.detail


def test_a_failing_check_advises_how_to_refuse_fsdp2(outcomes):
    assert "set supports_fsdp2 = False" in outcomes[(BROKEN + "PlainTensorMomentum", "FSDP2")].detail


def test_the_command_prints_a_row_per_check_and_exits_1_on_a_failure(capsys):
    assert main([BROKEN + "IgnoresSchedule"]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(BROKEN)]
    assert len(rows) == len(CHECKS) and "lr schedule  FAIL" in out
    assert out.rstrip().endswith("8 of 9 checks passed; 1 failed")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module.Optimizer", "cannot import 'no_such_module.Optimizer' (ModuleNotFoundError"),
        ("no_such_config", "optim._target_ must be an import path"),
    ],
)
def test_an_optimizer_that_cannot_be_built_is_one_error_line_and_exit_2(capsys, spec, message):
    assert main([spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
