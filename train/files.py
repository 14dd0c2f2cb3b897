"""Durable file writes: a file appears whole or not at all, and survives a power loss once written;
a file's sha256; and the reading of append-only JSON-lines files, which a crash may leave with a
torn last line.

A rename is atomic but not durable until its directory is fsynced, and a file's data is not
durable until the file is; every writer of run state (run directory, checkpoints, metrics, shards
and their manifests, eval results, the registry cache) goes through these functions. An OSError
raised while writing names the file (`naming`): Python's write errors name none, and a full disk
must say where it is.

A damaged line in a JSON-lines file (`read_jsonl`, the one reader of them): a torn LAST line is
what a crash mid-append leaves (or a writer still at it), and is left out, returned apart so
that the caller can say so or keep it; a line before the last that is not JSON is damage, not a
crash's trace, and is refused with the file and line number.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's quota used up


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the entries of `directory` (a rename or a new file in it) durable."""
    _fsync(directory)


def _fsync(path: str | os.PathLike) -> None:
    """Make durable what `path` holds: a file's data, or a directory's entries."""
    fd = os.open(path, os.O_RDONLY)
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
    """Write `data` to a temporary sibling and `publish` it as `path`."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path), open(staged, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return publish(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def publish(staged: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make the complete file `staged` (on the same filesystem) appear as `path`, whole and durably:
    fsync its data, rename it over `path`, fsync the directory."""
    path = Path(path)
    with naming(path):
        _fsync(staged)
        os.replace(staged, path)
    fsync_dir(path.parent)
    return path


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path) -> tuple[list[tuple[str, Any]], str | None]:
    """The (line, parsed value) pairs of a JSON-lines file, and its torn last line, if any, which is
    left out; a line before the last that is not JSON is a ValueError naming the file and line
    (the policy of the module docstring). Blank lines are skipped."""
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
