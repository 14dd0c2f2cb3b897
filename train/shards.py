"""The token shard format, and the manifest of a directory of shards.

Shard format (llm.c / modded-nanoGPT `.bin`): a header of 256 little-endian int32,
[20240520 (magic), 1 (version), ntok, 0, ...], then ntok little-endian uint16
tokens (GPT-2 BPE or bytes). Shards made by llm.c or modded-nanoGPT load here and ours
load there. A directory prepared here also holds manifest.json: its tokenizer and each
shard's token count and sha256, checked when training uses the shards. Shards and manifests
are written atomically and durably (train/files.py `atomic_write`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from train.files import atomic_write, sha256_of
from train.tokenizer import TOKENIZERS

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MANIFEST = "manifest.json"


class DataError(ValueError):
    """Bad data input: a missing or corrupt shard, an empty corpus, too little data."""


# --- shard files -------------------------------------------------------------


def write_shard(path: str | os.PathLike, tokens: np.ndarray | Sequence[int]) -> Path:
    """Write tokens as one shard, atomically and durably (train/files.py)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        raise DataError(f"{path}: refusing to write a shard with no tokens")
    if tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max:
        raise DataError(f"{path}: token ids must fit in uint16 (0..65535)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, tokens.size
    return atomic_write(path, header.tobytes() + tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def read_shard_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path}: file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path}: truncated, {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, ntok = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise DataError(f"shard {path}: bad magic number {magic} (expected {MAGIC}); not an llm.c .bin shard")
    if version != VERSION:
        raise DataError(f"shard {path}: unsupported version {version} (expected {VERSION})")
    expected = HEADER_BYTES + TOKEN_DTYPE.itemsize * ntok
    if size < expected:
        raise DataError(
            f"shard {path}: truncated, the header promises {ntok} tokens "
            f"({expected} bytes) but the file has {size} bytes"
        )
    if size > expected:
        raise DataError(
            f"shard {path}: token count mismatch, the header says {ntok} tokens "
            f"({expected} bytes) but the file has {size} bytes"
        )
    if ntok == 0:
        raise DataError(f"shard {path}: holds no tokens")
    return ntok


def load_shard(path: str | os.PathLike) -> np.memmap:
    """Memory-map a validated shard's tokens (uint16, read-only)."""
    ntok = read_shard_header(path)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(ntok,))


# --- the manifest of a prepared directory ---------------------------------------


def write_manifest(directory: str | os.PathLike, tokenizer: str, source: str) -> Path:
    """Record the tokenizer and every shard's token count and sha256 in directory/manifest.json."""
    directory = Path(directory)
    shards = {p.name: {"tokens": read_shard_header(p), "sha256": sha256_of(p)} for p in sorted(directory.glob("*.bin"))}
    manifest = {"tokenizer": tokenizer, "source": source, "shards": shards}
    return atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """directory/manifest.json, or None for a directory without one (shards made elsewhere)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest["tokenizer"] not in TOKENIZERS or not isinstance(manifest["shards"], dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is damaged (not a shard manifest); prepare the directory again") from None
    return manifest


def check_manifest_tokenizer(directory: Path, manifest: Mapping, tokenizer: str) -> None:
    if manifest["tokenizer"] != tokenizer:
        raise DataError(
            f"the shards in {directory} were made with tokenizer {manifest['tokenizer']!r}, "
            f"but data.tokenizer is {tokenizer!r}; set data.tokenizer={manifest['tokenizer']} or use other shards"
        )


def check_manifest_files(files: Sequence[Path], manifest: Mapping, checksums: bool) -> None:
    """Each file is the one the manifest recorded: its token count, and with `checksums` its
    sha256 (about a second per GB)."""
    for path in files:
        recorded = manifest["shards"].get(path.name)
        if recorded is None:
            raise DataError(f"shard {path} is not in {path.parent / MANIFEST}; prepare the directory again")
        if read_shard_header(path) != recorded["tokens"] or (checksums and sha256_of(path) != recorded["sha256"]):
            raise DataError(f"shard {path} is damaged: it differs from the sha256 in {path.parent / MANIFEST}")
