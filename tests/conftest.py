"""Shared fixtures: a composed config for a micro GPT on small synthetic shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train import config
from train.shards import write_shard

CONF_DIR = config.CONF_DIR
MICRO_VOCAB = 512


def compose_config(*overrides: str) -> dict:
    return config.compose_config(overrides)


def markov_tokens(n: int, seed: int) -> np.ndarray:
    """A learnable stream: each token mostly follows from the one before it."""
    rng = np.random.default_rng(seed)
    tokens = np.empty(n, dtype=np.int64)
    tokens[0] = 0
    noise = rng.random(n) < 0.2
    random_tokens = rng.integers(0, MICRO_VOCAB, n)
    for i in range(1, n):
        tokens[i] = random_tokens[i] if noise[i] else (tokens[i - 1] * 7 + 3) % MICRO_VOCAB
    return tokens


@pytest.fixture(scope="session")
def micro_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("micro_shards")
    write_shard(root / "micro_val_000000.bin", markov_tokens(8_192, seed=1))
    write_shard(root / "micro_train_000001.bin", markov_tokens(60_000, seed=2))
    write_shard(root / "micro_train_000002.bin", markov_tokens(40_000, seed=3))
    return root


def micro_overrides(shards: Path, *extra: str) -> list[str]:
    """A 2-layer, 32-wide GPT that trains a few steps in about a second."""
    return [
        "model.vocab_size=512",
        "model.n_layer=2",
        "model.n_head=2",
        "model.head_dim=16",
        "model.d_model=32",
        "data.name=shards",
        f"data.dir={shards}",
        "data.train_pattern=micro_train_*.bin",
        "data.val_pattern=micro_val_*.bin",
        "data.val_tokens=1024",
        "train.steps=12",
        "train.batch_tokens=512",
        "train.micro_batch=4",
        "train.seq_len=32",
        "train.val_every=4",
        "train.checkpoint_every=4",
        "train.keep_checkpoints=null",
        "train.threads=1",
        *extra,
    ]


@pytest.fixture
def micro_config(micro_shards, tmp_path):
    def make(*extra: str, out: str = "run") -> dict:
        return compose_config(*micro_overrides(micro_shards, f"out_dir={tmp_path / out}", *extra))

    return make
