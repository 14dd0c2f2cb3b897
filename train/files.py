"""Durable file writes: a file appears whole or not at all, and survives a power loss once written.

A rename is atomic but not durable until its directory is fsynced, and a file's data is not
durable until the file is; every writer of run state (run directory, checkpoints, metrics, shard
manifests, eval results) goes through these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the entries of `directory` (a rename or a new file in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to a temporary sibling, fsync it, rename it over `path`, fsync the directory."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(staged, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path
