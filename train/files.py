"""Durable file writes: a file appears whole or not at all, and survives a power loss once written;
a file's sha256; an OS lock that processes (and nodes sharing a file system) take in turn
(`held_lock`); and the one reader of JSON-lines files.

A rename is atomic but not durable until its directory is fsynced, and a file's data is not
durable until the file is; every writer of run state (run directory, checkpoints, metrics, shards
and their manifests, eval results, the registry cache) goes through these functions. An OSError
raised while writing names the file (`naming`): Python's write errors name none, and a full disk
must say where it is.

The policy for a damaged line of a JSON-lines file (`read_jsonl`): in a file that is appended to
(metrics.jsonl, launches.jsonl), a LAST line that is not JSON is torn, the trace a crash mid-append
leaves (or a writer still at it): it is left out of the values and returned apart, so that the
caller can say so or keep it. Any other line that is not JSON (or not UTF-8) is damage, not a
crash's trace: a ValueError naming the file and the line. A file written whole (`atomic_write`,
or by hand: HellaSwag rows) cannot be torn, so there every such line is damage. `read_jsonl_tail`
reads only a file's end under the same policy.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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


@contextmanager
def held_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """An OS lock (flock) on `path` for the block: yields True when taken, False when another
    process holds it and `wait` is false. The OS releases it when its holder dies, so a killed
    process never leaves a stale lock (on a shared file system too, where it supports flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # closing the file releases the lock


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


def append_durably(path: str | os.PathLike, text: str) -> None:
    """Append `text` (whole lines) to `path` and fsync it, and the directory too when this made the
    file: durable once this returns. A crash meanwhile tears at most the last line (`read_jsonl`)."""
    path = Path(path)
    created = not path.exists()
    with naming(path):
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(path.parent)


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class JsonLine(NamedTuple):
    """One line of a JSON-lines file: its number (from 1; in a tail, from -1 for the last line
    back), its text, and the value it holds."""

    number: int
    text: str
    value: Any


def read_jsonl(path: Path, appended: bool = True) -> tuple[list[JsonLine], str | None]:
    """The lines of a JSON-lines file that hold a value (blank lines are skipped), and the torn last
    line of a file that is `appended` to, if any (undecodable bytes replaced by U+FFFD); under the
    policy of the module docstring, any other line that is not JSON is a ValueError."""
    raw_lines = path.read_bytes().splitlines()
    return _parse_lines(path, list(enumerate(raw_lines, 1)), appended)


def read_jsonl_tail(path: Path, max_bytes: int) -> tuple[list[JsonLine], str | None]:
    """`read_jsonl` of an appended file's complete lines within its last `max_bytes` bytes (a line
    cut by that start is left out), numbered from the end: the cost of reading the end of a long
    file, which a monitor polls. The same policy: the torn last line is returned apart, any other
    line that is not JSON is a ValueError."""
    with naming(path), open(path, "rb") as f:
        start = max(0, f.seek(0, os.SEEK_END) - max_bytes)
        f.seek(max(0, start - 1))
        tail = f.read()
    # Read from the byte before the start: when it ends a line, the first piece is empty; either
    # way the first piece is no whole line unless the tail is the whole file.
    raw_lines = tail.splitlines()[1:] if start > 0 else tail.splitlines()
    count = len(raw_lines)
    return _parse_lines(path, [(number - count - 1, raw) for number, raw in enumerate(raw_lines, 1)], appended=True)


def _parse_lines(path: Path, raw_lines: list[tuple[int, bytes]], appended: bool) -> tuple[list[JsonLine], str | None]:
    """The JsonLines of numbered raw lines, and the torn last one, under the module's policy."""
    lines, torn = [], None
    for index, (number, raw) in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            lines.append(JsonLine(number, text, json.loads(text)))
        except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError
            if appended and index == len(raw_lines):
                torn = raw.decode("utf-8", errors="replace")
                continue
            fault = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            where = f"line {number}" if number > 0 else f"line {-number} from the end"
            raise ValueError(f"{path}: {where} is not JSON ({fault}); the file is damaged: repair or move it") from None
    return lines, torn
