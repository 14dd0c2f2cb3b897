"""The run directory: one per run, shared by all ranks, never overwritten.

    out_dir/
      config.yaml      the resolved config of the first launch (written once; if deleted, a later
                       launch restores it from the config its checkpoint holds)
      launches.jsonl   one record per launch: code version, packages, hardware (with the CPU's
                       instruction-set features), argv, the polar iteration's dtype, the
                       config keys it changed (old and new value), the checkpoint it resumed
                       from and any checkpoint it passed over
      code.diff        uncommitted changes at the first launch, when there were any (each launch
                       records the sha256 of its own)
      metrics.jsonl    one JSON object per logged step (the single source of truth)
      console.log      everything printed on rank 0
      checkpoints/     step_XXXXXXX/ directories (train/checkpoint.py)
      wandb_id         the run's W&B id, when W&B was on (train/metrics.py)
      .lock            held by the launch that trains (an OS lock: released when it dies)

The run's config is config.yaml with each launch's allowed changes applied in order
(`effective_config`). A launch may change only the keys that do not change the run's
numbers (RESUMABLE_CHANGES, from each key's role in train/schema.py) and train.steps (see
train/schedule.py: the lr schedule must agree); anything else is refused, naming each key with its
old and new value.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from train.files import append_durably, atomic_write, naming, read_jsonl
from train.schema import LEGACY_DEFAULTS, LEGACY_OPTIM_DEFAULTS, RESUMABLE_CHANGES

EXTENSIBLE = "train.steps"  # allowed when the lr schedule agrees up to the resumed step (train/schedule.py)
LOCK = ".lock"
CONFIG = "config.yaml"
LAUNCHES = "launches.jsonl"


class RunDirError(ValueError):
    """The run directory cannot be used as asked."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def legacy_defaults(flat_config: dict[str, Any]) -> dict[str, Any]:
    """The values a run with this (flattened) config had for every key added since."""
    defaults = dict(LEGACY_DEFAULTS)
    for optimizers, keys in LEGACY_OPTIM_DEFAULTS.items():
        if flat_config.get("optim.name") in optimizers:
            defaults.update(keys)
    return defaults


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every key whose value differs between two resolved configs."""
    flat_saved = flatten(saved)
    old, new = {**legacy_defaults(flat_saved), **flat_saved}, flatten(current)
    absent = "<absent>"
    return {
        k: (old.get(k, absent), new.get(k, absent))
        for k in sorted(old.keys() | new.keys())
        if old.get(k, absent) != new.get(k, absent)
    }


def refused_changes(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    return {k: v for k, v in changes.items() if not k.startswith(RESUMABLE_CHANGES) and k != EXTENSIBLE}


def apply_changes(config: dict[str, Any], changes: dict[str, list[Any]]) -> dict[str, Any]:
    """config with each dotted key set to its new value (a launch record's config_changes)."""
    for key, (_, new) in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = new
    return config


def read_launches(path: Path) -> list[dict[str, Any]]:
    """The launch records. A torn last line (a launch that died, or found the disk full, while
    writing its record) is left out; a damaged line before it is an error naming the file."""
    if not path.is_file():
        return []
    return [line.value for line in read_jsonl(path)[0]]


def effective_config(run_dir: str | os.PathLike, base: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """config.yaml (or, where it is missing, `base`: the config a checkpoint of the run holds) with
    the changes of every later launch applied, and the values an older run had for keys added
    since (legacy_defaults); None without either."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).is_file():
        config = yaml.safe_load((run_dir / CONFIG).read_text())
    elif base is not None:
        config = copy.deepcopy(base)
    else:
        return None
    present = flatten(config)
    apply_changes(config, {key: (None, value) for key, value in legacy_defaults(present).items() if key not in present})
    for launch in read_launches(run_dir / LAUNCHES):
        apply_changes(config, launch.get("config_changes") or {})
    return config


def git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


# The CPU features that set how fast a CPU run is: without bf16 units (AVX512-BF16 or AMX) a bf16
# matmul is an order of magnitude slower than fp32 (optim.polar.ns_dtype). Recorded, with the
# variables that cap them, so that a slow run can be explained from its launch record.
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
CPU_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def _cpu_flags() -> set[str] | None:
    """The kernel's CPU flags (Linux /proc/cpuinfo); None where it does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def cpu_features() -> dict[str, Any]:
    """What the CPU has (`flags`, None off Linux x86) and what torch uses of it: its kernels'
    instruction set and whether oneDNN runs bf16 matmuls natively (both honour the variables)."""
    flags = _cpu_flags()
    bf16_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {
        "flags": None if flags is None else {flag: flag in flags for flag in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": bool(bf16_check()) if bf16_check else None,
        **{name: os.environ[name] for name in CPU_ISA_VARIABLES if name in os.environ},
    }


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_features": cpu_features(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def describe_hardware(info: dict[str, Any]) -> str:
    """One line for a `hardware()` record, e.g. "2 CPUs (x86_64; AVX2, AVX-512, no AVX512-BF16,
    no AMX-BF16; torch kernels AVX512, oneDNN bf16 no)"."""
    gpus = info.get("gpus")
    if gpus:
        return f"{len(gpus)}x {gpus[0]}"
    features = info.get("cpu_features") or {}
    parts = [info.get("processor") or "?"]
    if features.get("flags") is not None:
        parts.append(", ".join(("" if has else "no ") + CPU_FLAGS[flag] for flag, has in features["flags"].items()))
    if "torch_cpu_capability" in features:
        bf16 = {True: "yes", False: "no", None: "?"}[features.get("onednn_bf16")]
        caps = "".join(f", {name}={features[name]}" for name in CPU_ISA_VARIABLES if name in features)
        parts.append(f"torch kernels {features['torch_cpu_capability']}, oneDNN bf16 {bf16}{caps}")
    return f"{info.get('cpu_count')} CPUs ({'; '.join(parts)})"


def packages() -> dict[str, str]:
    found = {dist.metadata["Name"]: dist.version for dist in metadata.distributions() if dist.metadata["Name"]}
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


class RunDir:
    """A run directory as rank 0 uses it: `lock`, `changes` (check only), `commit` (write)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.launches_path = self.path / LAUNCHES
        self.metrics_path = self.path / "metrics.jsonl"
        self.console_path = self.path / "console.log"
        self.checkpoint_dir = self.path / "checkpoints"
        self._lock_file = None

    def lock(self) -> None:
        """Create the directory and take its lock, or refuse naming the launch that holds it.

        An OS lock (flock), so a killed launch never blocks its own resume."""
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.path / LOCK, "a+")
        except OSError as err:
            raise RunDirError(
                f"out_dir {str(self.path)!r} is not writable ({err.strerror}); choose another out_dir"
            ) from None
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise RunDirError(
                f"out_dir {str(self.path)!r} is in use by another launch ({holder}); "
                "wait for it to end, or use another out_dir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        this_launch = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
        with naming(self.path / LOCK):
            lock_file.write(this_launch + "\n")
            lock_file.flush()
        self._lock_file = lock_file

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def changes(
        self, config: dict[str, Any], checkpoint_config: dict[str, Any] | None = None
    ) -> dict[str, tuple[Any, Any]]:
        """The keys this launch changes against the run's effective config ({} for a new run);
        refuses any change outside RESUMABLE_CHANGES and train.steps. Without config.yaml, the
        run's config is the one its newest checkpoint holds (`checkpoint_config`; `commit`
        restores config.yaml from it); a run with launches but neither is refused. Writes nothing."""
        saved = effective_config(self.path, base=checkpoint_config)
        if saved is None:
            if read_launches(self.launches_path):
                raise RunDirError(
                    f"out_dir {str(self.path)!r} has no {CONFIG} and no intact checkpoint holding the run's config, "
                    f"but {LAUNCHES} shows launches: put {CONFIG} back, or use a new out_dir"
                )
            return {}
        changes = config_changes(saved, config)
        refused = refused_changes(changes)
        if refused:
            listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
            raise RunDirError(
                f"out_dir {str(self.path)!r} holds a run with a different config (changed: {listed}); "
                "use a new out_dir, or the same settings to resume it"
            )
        return changes

    def _remove_torn_record(self) -> str | None:
        """Take a torn last line (a launch that died writing its record) out of launches.jsonl, so
        that the next record starts on a line of its own; returns it."""
        if not self.launches_path.is_file():
            return None
        lines, torn = read_jsonl(self.launches_path)
        if torn is not None:
            atomic_write(self.launches_path, "".join(line.text + "\n" for line in lines))
        return torn

    def commit(
        self,
        config: dict[str, Any],
        world_size: int,
        changes: dict[str, tuple[Any, Any]],
        checkpoint_config: dict[str, Any] | None = None,
        **facts: Any,
    ) -> list[str]:
        """Write this launch's record: its config changes key by key and `facts` (the checkpoint it
        resumed from, what it passed over). The first launch also writes config.yaml and code.diff;
        a later one finding config.yaml gone restores it from `checkpoint_config`. A torn last
        record (a launch that died writing it) is moved into this record first, so that this one
        starts on a line of its own. Returns a note for each repair."""
        notes = []
        restored = not self.config_path.exists() and checkpoint_config is not None
        first = not self.config_path.exists() and not restored
        diff = git("diff", "HEAD")
        if first:
            atomic_write(self.config_path, yaml.safe_dump(config, sort_keys=False))
            if diff:
                atomic_write(self.path / "code.diff", diff)
        if restored:
            atomic_write(self.config_path, yaml.safe_dump(checkpoint_config, sort_keys=False))
            notes.append(f"{CONFIG} was missing: restored it from the config of checkpoint {facts.get('resumed_from')}")
        torn = self._remove_torn_record()
        if torn is not None:
            notes.append(f"moved the torn last line of {LAUNCHES} (a launch that died writing it) into this record")
        launch = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resuming": not first,
            "argv": sys.argv,
            "world_size": world_size,
            "config_changes": {key: list(values) for key, values in changes.items()},
            **facts,
            **({"config_restored": True} if restored else {}),
            **({"torn_previous_record": torn} if torn is not None else {}),
            "git_commit": (git("rev-parse", "HEAD") or "").strip() or None,
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()
            if diff
            else None,  # code.diff is the first launch's
            "python": sys.version,
            "torch": torch.__version__,
            "hardware": hardware(),
            "packages": packages(),
        }
        append_durably(self.launches_path, json.dumps(launch) + "\n")
        return notes
