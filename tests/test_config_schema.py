"""The config schema (train/schema.py): every key has a role, the key lists derive from it, single
values are checked through it, and the optimizer options share one AdamW-groups file."""

from __future__ import annotations

import pytest

from eval.runs import Run, setting_values
from train.config import check_config, compose_config, group_options, known_keys
from train.rundir import flatten, refused_changes
from train.schema import (
    EXECUTION,
    LEGACY_DEFAULTS,
    LEGACY_OPTIM_DEFAULTS,
    NOT_SETTINGS,
    NUMBERS,
    OBSERVATION,
    PROTOCOL_FREE,
    RESUMABLE_CHANGES,
    SCHEMA_KEYS,
    SECTIONS,
    ConfigError,
    RootConfig,
    key_of,
)


def composed_configs() -> list[dict]:
    """The root config with every option of every group, and every recipe."""
    return [
        compose_config([f"{group}={option}"])
        for group in ("optim", "model", "data", "experiment")
        for option in group_options(group)
    ]


@pytest.fixture(scope="module")
def composed_keys() -> set[str]:
    return {key for cfg in composed_configs() for key in flatten(cfg)}


def test_every_key_of_every_composed_config_and_conf_file_has_a_role(composed_keys):
    sections = {*SECTIONS, "hydra"}  # a section is no key; hydra.* is Hydra's own
    defined = {key for key in known_keys() if key not in sections and not key.startswith("hydra.")}
    assert [key for key in sorted(composed_keys | defined) if key_of(key) is None] == []


def test_every_key_of_the_schema_is_in_the_composed_config(composed_keys):
    parts = [key.split(".") for key in composed_keys]
    composed_names = {".".join(part[:end]) for part in parts for end in range(1, len(part) + 1)}
    assert set(SCHEMA_KEYS) - composed_names == set()


# The hand-kept lists the schema replaced, as they were last (prefixes for str.startswith; "observers."
# came with the observers).
OLD_RESUMABLE_CHANGES = (
    "out_dir",
    "train.log_every",
    "train.val_every",
    "train.val_every_late",
    "train.val_late_frac",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.device",
    "train.threads",
    "train.compile",
    "train.parallelism",
    "train.timeout_s",
    "train.max_skipped_steps",
    "data.dir",
    "data.verify_checksums",
    "diagnostics.",
    "eval.",
    "wandb.",
    "observers.",
)
OLD_PROTOCOL_FREE = (
    "seed",
    "out_dir",
    "optim.",
    "train.steps",
    "train.warmup_frac",
    "train.decay_frac",
    "train.micro_batch",
    "train.device",
    "train.threads",
    "train.compile",
    "train.parallelism",
    "train.timeout_s",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.dir",
    "data.verify_checksums",
    "diagnostics.",
    "eval.",
    "wandb.",
    "protocol.unofficial",
    "observers.",
)
OLD_NOT_SETTINGS = (
    "out_dir",
    "seed",
    "wandb.",
    "eval.",
    "diagnostics.",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.threads",
    "train.device",
    "train.compile",
    "train.timeout_s",
    "data.verify_checksums",
    "data.dir",
    "optim.search",
    "optim.source",
    "protocol.",
    "recipe",
    "observers.",
)
OLD_LEGACY_DEFAULTS = {
    "data.tokenizer": "gpt2",
    "data.verify_checksums": True,
    "train.max_skipped_steps": 0,
    "diagnostics.trace_every": 0,
    "train.val_every_late": 0,
    "train.val_late_frac": 0.1,
    "recipe": None,
    "protocol.name": None,
    "protocol.target": None,
    "protocol.unofficial": False,
}
# Reclassified deliberately, by role: optim.debug and optim.compile only change how the update is
# executed (as train.compile), so a resumed run may change them; the validation cadence, the
# parallelism, max_skipped_steps and those two never change the numbers, so they no longer label
# runs as different settings in reports.
NEWLY_RESUMABLE = {"optim.debug", "optim.compile"}
NO_LONGER_SETTINGS = {
    "optim.debug",
    "optim.compile",
    "train.parallelism",
    "train.val_every",
    "train.val_every_late",
    "train.val_late_frac",
    "train.max_skipped_steps",
}


def changed(keys: set[str], old: tuple[str, ...], new: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        "added": {k for k in keys if k.startswith(new) and not k.startswith(old)},
        "removed": {k for k in keys if k.startswith(old) and not k.startswith(new)},
    }


def test_derived_lists_are_the_old_hand_lists_but_for_the_keys_reclassified_deliberately(composed_keys):
    keys = composed_keys
    assert changed(keys, OLD_RESUMABLE_CHANGES, RESUMABLE_CHANGES) == {"added": NEWLY_RESUMABLE, "removed": set()}
    assert changed(keys, OLD_PROTOCOL_FREE, PROTOCOL_FREE) == {"added": set(), "removed": set()}
    assert changed(keys, OLD_NOT_SETTINGS, NOT_SETTINGS) == {"added": NO_LONGER_SETTINGS, "removed": set()}
    assert LEGACY_DEFAULTS == OLD_LEGACY_DEFAULTS
    assert LEGACY_OPTIM_DEFAULTS[("normuon", "unormuon")] == {"optim.matrix.normalize": "rows"}


def test_each_derived_prefix_list_says_what_each_keys_role_says(composed_keys):
    for key in composed_keys:
        spec = key_of(key)
        assert key.startswith(RESUMABLE_CHANGES) == (spec.role in (EXECUTION, OBSERVATION)), key
        assert key.startswith(PROTOCOL_FREE) == spec.protocol_free, key
        assert key.startswith(NOT_SETTINGS) == (spec.role is not NUMBERS or key == "seed"), key


def test_a_resumed_run_may_change_how_the_update_executes_but_not_its_numbers():
    changes = {"optim.debug": (False, True), "optim.compile": (False, True), "optim.matrix.lr": (0.02, 0.03)}
    assert refused_changes(changes) == {"optim.matrix.lr": (0.02, 0.03)}


def test_parallelism_and_validation_cadence_do_not_label_runs_as_different_settings():
    base = compose_config(["optim=muon"])
    runs = [
        Run(path=None, config=base),
        Run(
            path=None,
            config=compose_config(
                [
                    "optim=muon",
                    "train.parallelism=fsdp2",
                    "train.val_every=10",
                    "optim.debug=true",
                    "optim.matrix.lr=0.03",
                ]
            ),
        ),
    ]
    values = setting_values(runs, [flatten(run.config) for run in runs])
    assert [key for key, by_optimizer in values.items() if len(by_optimizer["muon"]) > 1] == ["optim.matrix.lr"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=0", "train.steps must be a positive integer, got 0"),
        ("train.seq_len=a", "train.seq_len must be a positive integer, got 'a'"),
        ("train.warmup_frac=-0.1", "train.warmup_frac must be in [0, 1], got -0.1"),
        ("train.val_every_late=x", "train.val_every_late must be an integer >= 0, got 'x'"),
        ("train.checkpoint_every=1.5", "train.checkpoint_every must be an integer >= 0, got 1.5"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints must be a positive integer or null, got 0"),
        ("train.precision=fp16", "train.precision must be one of ('auto', 'fp32', 'bf16'), got 'fp16'"),
        ("train.parallelism=tp", "train.parallelism must be one of ('ddp', 'fsdp2'), got 'tp'"),
        ("seed=1.5", "seed must be an integer, got 1.5"),
        ("diagnostics.every=-1", "diagnostics.every must be an integer >= 0 (0: off), got -1"),
        ("diagnostics.starvation_window=0", "diagnostics.starvation_window must be a positive integer, got 0"),
        ("eval.hellaswag_every=-2", "eval.hellaswag_every must be an integer >= 0 (0: never), got -2"),
        ("wandb.mode=x", "wandb.mode must be one of ('disabled', 'offline', 'online'), got 'x'"),
        ("protocol.unofficial=yes", "protocol.unofficial must be true or false, got 'yes'"),
        (
            "diagnostics.every=5 diagnostics.probe_tokens=10",
            "diagnostics.probe_tokens must be at least train.seq_len, got 10",
        ),
        ("train.decay_frac=0.8 train.warmup_frac=0.5", "train.warmup_frac + train.decay_frac must be at most 1"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_the_value_and_what_it_must_be(override, message):
    with pytest.raises(ConfigError) as refused:
        check_config(compose_config(override.split()))
    assert str(refused.value) == message


def test_the_typed_view_has_every_section_and_refuses_an_unknown_or_missing_key():
    cfg = compose_config(["optim=aurora"])
    root = RootConfig.from_dict(cfg)
    assert (root.train.steps, root.data.tokenizer, root.optim["name"]) == (200, "gpt2", "aurora")
    assert root.observers["validation"] == "train.observers.Validation"
    with pytest.raises(ConfigError, match=r"config: unknown keys \['trian'\], missing keys \[\]"):
        RootConfig.from_dict({**cfg, "trian": {}})
    del cfg["train"]["steps"]
    with pytest.raises(ConfigError, match=r"config section train: unknown keys \[\], missing keys \['steps'\]"):
        RootConfig.from_dict(cfg)


def test_optimizers_share_the_adamw_groups_and_their_own_values_win():
    muon, track = (compose_config([f"optim={name}"])["optim"] for name in ("muon", "normuon_track3"))
    assert muon["embed"] == {"lr": 0.7, "betas": [0.8, 0.95], "eps": 1.0e-10, "weight_decay": 0.001}
    assert track["embed"] == {"lr": 0.3, "betas": [0.8, 0.95], "eps": 1.0e-10, "weight_decay": 0.0}
    # a key that only the shared file defines is still a known key
    assert compose_config(["optim=adamw", "optim.head.eps=1e-8"])["optim"]["head"]["eps"] == 1e-8


def test_the_shared_groups_file_is_no_optimizer_option():
    assert "adamw_groups" not in group_options("optim")
    with pytest.raises(ConfigError, match="optim=adamw_groups: no such option"):
        compose_config(["optim=adamw_groups"])
    with pytest.raises(ConfigError, match="unknown config key 'optim_defaults'"):
        compose_config(["optim_defaults=adamw_groups"])
