"""train/metric_names.py: every key a run writes is one it defines, and the reports' names match."""

from __future__ import annotations

from model import build_model
from optim.groups import assign_groups
from train import metric_names as names
from train.loop import train
from train.metrics import read_metrics

DIAGNOSED = (
    "optim=aurora",
    "diagnostics.every=4",
    "diagnostics.probe_tokens=256",
    "diagnostics.starvation_window=1",
    "diagnostics.histogram_steps=[8]",
)


def defined_diagnostics(cfg: dict) -> set[str]:
    """The diag/ keys metric_names defines for this model with every diagnostic on: activation
    statistics per hidden layer and pooled; update statistics per matrix and pooled; row norms per matrix."""
    model = build_model(cfg["model"])
    matrices = [name.removesuffix(".weight") for name, _ in assign_groups(model)["matrix"]]
    pooled = {names.pooled_name(matrix) for matrix in matrices}
    hidden = [names.block_module(i, names.MLP_HIDDEN) for i in range(cfg["model"]["n_layer"])] + [names.MLP_HIDDEN]
    update_stats = (*names.LEVERAGE_STATS, names.STARVED_FRAC, *names.STALE_STATS, names.LEVERAGE_HIST)
    return (
        {names.diagnostic(module, stat) for module in hidden for stat in names.ACTIVATION_STATS}
        | {names.diagnostic(module, stat) for module in [*matrices, *pooled] for stat in update_stats}
        | {names.diagnostic(module, stat) for module in matrices for stat in names.ROW_NORM_STATS}
    )


def test_a_diagnostic_steps_record_holds_exactly_the_names_the_module_defines(micro_config):
    cfg = micro_config(*DIAGNOSED)
    records = {record[names.STEP]: record for record in read_metrics(train(cfg))}
    assert set(records[8]) == {*names.STEP_KEYS, names.VAL_LOSS} | defined_diagnostics(cfg)
    assert set(records[7]) == set(names.STEP_KEYS)  # neither a diagnostic nor a validation step
    # what the reports read is among them
    for key in (
        names.DEAD,
        names.NEARLY_DEAD,
        names.STARVED_UP,
        names.STARVED_DOWN,
        names.LEVERAGE_CV_UP,
        names.LEVERAGE_HIST_UP,
    ):
        assert key in records[8]
    for part, stat in ((names.MLP_UP, names.WEIGHT_ROW_NORM_REL_MIN), (names.MLP_HIDDEN, names.ACT_DEAD_FRAC)):
        blocks = [key for key in records[8] if names.every_block(part, stat).fullmatch(key)]
        assert blocks == [names.diagnostic(names.block_module(i, part), stat) for i in range(2)]


def test_pooled_names_drop_only_a_leading_block_prefix():
    assert names.pooled_name("blocks.12.mlp.up") == "mlp.up"
    assert names.pooled_name("mlp.up") is None and names.pooled_name("head.blocks.1.x") is None
