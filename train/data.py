"""The loaders that read token shards (their format: train/shards.py), and the data config that names them.

Training order (TokenLoader): every shard is cut into non-overlapping windows of
seq_len + 1 tokens (a window never crosses a shard boundary; a shard's last
ntok mod (seq_len + 1) tokens are unused). Epoch e visits the windows in a
permutation seeded by (seed, e). Each next_batch() advances one global position
by world_size * micro_batch windows, and rank r takes the contiguous chunk
[pos + r*B, pos + (r+1)*B) of it: ranks never share a window, and the windows
consumed per optimizer step do not depend on how they are split across ranks.
An epoch ends when fewer than world_size * micro_batch windows remain (that
remainder is skipped); the next epoch reshuffles everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from train.corpus import ensure_builtin_corpus
from train.shards import (
    DataError,
    check_manifest_files,
    check_manifest_tokenizer,
    load_shard,
    read_manifest,
    read_shard_header,
)
from train.tokenizer import TOKENIZERS


def outside_vocabulary(path: Path, token_id: int, position: int, vocab_size: int) -> DataError:
    return DataError(
        f"shard {path} holds token id {token_id} near token {position}, outside the model's vocabulary of "
        f"{vocab_size}: the shard is damaged or was made with another tokenizer (data.tokenizer)"
    )


# --- training batches --------------------------------------------------------


class TokenLoader:
    """Seeded, rank-aware, resumable batches of (inputs, targets) from shards."""

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        micro_batch: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        vocab_size: int | None = None,
    ):
        if micro_batch < 1 or seq_len < 1:
            raise ValueError(f"micro_batch ({micro_batch}) and seq_len ({seq_len}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if not files:
            raise DataError("TokenLoader: no training shard files given")
        self.micro_batch, self.seq_len = micro_batch, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.window = seq_len + 1
        self.vocab_size = vocab_size  # token ids must be below it (checked per batch: cheap, names the shard)
        self.files = [Path(f) for f in files]
        self.shards = [load_shard(f) for f in files]
        windows_per_shard = np.array([len(s) // self.window for s in self.shards], dtype=np.int64)
        # first global window index of each shard; window i lives in shard searchsorted(...) - 1
        self.shard_starts = np.concatenate(([0], np.cumsum(windows_per_shard)[:-1]))
        self.n_windows = int(windows_per_shard.sum())
        if self.n_windows < world_size * micro_batch:
            total = sum(len(s) for s in self.shards)
            raise DataError(
                f"seq_len {seq_len} is too long for the data: {len(files)} shard(s) with {total} tokens "
                f"give {self.n_windows} windows of seq_len+1 tokens, fewer than the "
                f"world_size*micro_batch = {world_size * micro_batch} needed for one batch"
            )
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None  # permutation of the current epoch, built lazily

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_windows)
        return self._order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch: int64 tensors [micro_batch, seq_len], targets shifted by one."""
        global_batch = self.world_size * self.micro_batch
        if self.position + global_batch > self.n_windows:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        start = self.position + self.rank * self.micro_batch
        windows = self._epoch_order()[start : start + self.micro_batch]
        self.position += global_batch
        shard_ids = np.searchsorted(self.shard_starts, windows, side="right") - 1
        offsets = (windows - self.shard_starts[shard_ids]) * self.window
        rows = np.stack([self.shards[s][o : o + self.window] for s, o in zip(shard_ids, offsets)])
        if self.vocab_size is not None and rows.max() >= self.vocab_size:
            row = int(np.argmax(rows.max(axis=1)))
            raise outside_vocabulary(self.files[shard_ids[row]], int(rows[row].max()), offsets[row], self.vocab_size)
        batch = torch.from_numpy(rows.astype(np.int64))
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        """The global stream position (the same on every rank), JSON-serialisable."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_windows": self.n_windows,
        }

    def check_state(self, state: Mapping) -> None:
        """Refuse a saved position taken over another stream (seed, seq_len or shards)."""
        mine = self.state_dict()
        for key in ("seed", "seq_len", "n_windows"):
            if state[key] != mine[key]:
                raise DataError(
                    f"cannot resume the data loader: the saved position is for {key}={state[key]}, "
                    f"this loader has {key}={mine[key]} (different seed, seq_len or shards)"
                )

    def load_state_dict(self, state: Mapping) -> None:
        self.check_state(state)
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


# --- validation batches ------------------------------------------------------


def validation_batches(
    files: Sequence[str | os.PathLike], micro_batch: int, seq_len: int, tokens: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches covering the first `tokens` target tokens of the val shards, in order.

    The budget is rounded down to whole global batches (world_size * micro_batch
    * seq_len tokens); global batch k gives rank r the stream span starting at
    (k * world_size + r) * micro_batch * seq_len, so ranks never overlap. Within a
    batch, consecutive rows continue one another (llm.c style: targets are the
    inputs shifted by one, so a span of B*T predictions reads B*T + 1 tokens).
    """
    per_rank = micro_batch * seq_len
    n_batches = validation_batch_count(files, micro_batch, seq_len, tokens, world_size)
    stream = _stream_head(files, n_batches * world_size * per_rank + 1)
    for k in range(n_batches):
        start = (k * world_size + rank) * per_rank
        span = torch.from_numpy(stream[start : start + per_rank + 1].astype(np.int64))
        yield span[:-1].view(micro_batch, seq_len), span[1:].view(micro_batch, seq_len)


def validation_batch_count(
    files: Sequence[str | os.PathLike],
    micro_batch: int,
    seq_len: int,
    tokens: int,
    world_size: int = 1,
    vocab_size: int | None = None,
) -> int:
    """How many global batches the validation budget gives; checks the val shards (headers, length,
    and with `vocab_size` every token id validation reads) so that a bad val shard stops a run
    before its first step, not at its first validation (where an id outside the vocabulary would
    be an IndexError, or a device assert on CUDA)."""
    global_batch = world_size * micro_batch * seq_len
    n_batches = tokens // global_batch
    if n_batches == 0:
        raise DataError(
            f"validation budget of {tokens} tokens is smaller than one global batch of "
            f"world_size*micro_batch*seq_len = {global_batch} tokens"
        )
    needed = n_batches * global_batch + 1
    have = sum(read_shard_header(f) for f in files)
    if have < needed:
        raise DataError(
            f"validation data too short: {len(files)} val shard(s) hold {have} tokens, "
            f"the validation budget needs {needed} (lower data.val_tokens or seq_len)"
        )
    if vocab_size is not None:
        for path, part in _stream_parts(files, needed):
            if part.max() >= vocab_size:
                position = int(np.argmax(part >= vocab_size))
                raise outside_vocabulary(Path(path), int(part[position]), position, vocab_size)
    return n_batches


def _stream_parts(files: Sequence[str | os.PathLike], needed: int) -> Iterator[tuple[str | os.PathLike, np.ndarray]]:
    """(shard, its tokens) making up the first `needed` tokens of the shards' concatenated stream."""
    have = 0
    for f in files:
        if have >= needed:
            break
        part = load_shard(f)[: needed - have]
        yield f, part
        have += len(part)


def _stream_head(files: Sequence[str | os.PathLike], needed: int) -> np.ndarray:
    """The first `needed` tokens of the shards' concatenated stream (validation_batch_count checked there are)."""
    return np.concatenate([part for _, part in _stream_parts(files, needed)])


# --- data config -------------------------------------------------------------

PREPARE_COMMANDS = {
    "shakespeare": "python -m train.prepare shakespeare --out {dir}",
    "shards": "python -m train.prepare local FILE [FILE ...] --out {dir}",
    "fineweb10b": "python -m train.prepare fineweb10b --out {dir}",
}


def check_data_config(data_cfg: Mapping) -> None:
    if data_cfg["name"] not in PREPARE_COMMANDS:
        raise DataError(f"data.name={data_cfg['name']!r} is unknown; expected one of {sorted(PREPARE_COMMANDS)}")
    if data_cfg["tokenizer"] not in TOKENIZERS:
        raise DataError(f"data.tokenizer must be one of {TOKENIZERS}, got {data_cfg['tokenizer']!r}")
    if not isinstance(data_cfg["verify_checksums"], bool):
        raise DataError(f"data.verify_checksums must be true or false, got {data_cfg['verify_checksums']!r}")


def prepare_command(data_cfg: Mapping) -> str:
    """The command that (re)builds the shards a data config names."""
    command = PREPARE_COMMANDS[data_cfg["name"]].format(dir=data_cfg["dir"])
    return command + (f" --tokenizer {data_cfg['tokenizer']}" if data_cfg["name"] != "fineweb10b" else "")


def resolve_shards(data_cfg: Mapping, verify: bool = True) -> tuple[list[Path], list[Path]]:
    """(train_files, val_files) for a data config (conf/data/*.yaml), sorted by name and checked.

    The built-in corpus (name: shakespeare) is prepared on first use; any other
    missing shards are an error naming the prepare command. Every shard's header is
    read, and where the directory has a manifest its tokenizer must be data.tokenizer
    and each shard must match it (sha256 too, unless data.verify_checksums or `verify` is false:
    one rank hashes for all). A relative `dir` is taken relative to the current directory.
    """
    check_data_config(data_cfg)
    data_dir = Path(data_cfg["dir"])
    if data_cfg["name"] == "shakespeare":
        ensure_builtin_corpus(data_dir, data_cfg["tokenizer"])
    found = []
    for key in ("train_pattern", "val_pattern"):
        files = sorted(data_dir.glob(data_cfg[key]))
        if not files:
            raise DataError(
                f"no shards match data.{key}={data_cfg[key]!r} in {data_dir}; "
                f"prepare them with: {prepare_command(data_cfg)}"
            )
        found.append(files)
    train_files, val_files = found
    manifest = read_manifest(data_dir)
    if manifest is not None:
        check_manifest_tokenizer(data_dir, manifest, data_cfg["tokenizer"])
    try:
        for path in train_files + val_files:
            read_shard_header(path)
        if manifest is not None:
            check_manifest_files(train_files + val_files, manifest, data_cfg["verify_checksums"] and verify)
    except DataError as err:
        raise DataError(f"{err} (rebuild: {prepare_command(data_cfg)})") from None
    return train_files, val_files
