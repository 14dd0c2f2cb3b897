"""Durable file writes: a file appears whole or not at all, and survives a power loss once written;
and the reading of append-only JSON-lines files, which a crash may leave with a torn last line.

A rename is atomic but not durable until its directory is fsynced, and a file's data is not
durable until the file is; every writer of run state (run directory, checkpoints, metrics, shards
and their manifests, eval results) goes through these functions. An OSError raised while writing
names the file (`naming`): Python's write errors name none, and a full disk must say where it is.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's quota used up


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the entries of `directory` (a rename or a new file in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an OSError raised inside the block `path` as its filename when it names none."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to a temporary sibling, fsync it, rename it over `path`, fsync the directory."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path), open(staged, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def read_jsonl(path: Path) -> tuple[list[tuple[str, Any]], str | None]:
    """The (line, parsed value) pairs of a JSON-lines file, and its torn last line, if any (a crash
    mid-append, or a writer still at it), which is left out. A line before the last that is not
    JSON is damage, not a crash's trace: a ValueError naming the file and line."""
    lines = path.read_text(errors="replace").splitlines()
    parsed, torn = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON; the file is damaged: repair or move it") from None
            torn = line
    return parsed, torn
