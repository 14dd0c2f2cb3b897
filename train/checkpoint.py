"""Checkpoints through torch.distributed.checkpoint (DCP): one format for 1 rank, DDP and FSDP2.

    checkpoints/step_0000100/
      .metadata, __*_*.distcp   model and optimizer state, keyed by parameter name, each
                                rank writing its own shards (DCP reshards on load, so a
                                run may resume on another world size)
      meta.pt                   step, elapsed time, config, lr schedule, loader position, RNG
      checksums.json            size and sha256 of every file above, written last

Every rank writes into step_XXXXXXX.tmp/; rank 0 writes meta.pt, then checksums.json, fsyncs
them and renames the directory into place (then fsyncs its parent), so a crash never leaves a
torn checkpoint under a checkpoint's name, and a checkpoint without checksums.json is
incomplete. A failed save (a full disk: ENOSPC) removes its partial directory and says so;
the previous checkpoint is untouched. Before loading, `newest_intact` checks every file
against checksums.json and falls back from a damaged checkpoint to the newest intact one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from model import GPT, build_model
from optim.distributed import barrier, is_main_process, main_process_decides
from train.files import DISK_FULL, atomic_write, fsync_dir, sha256_of
from train.metrics import logged_through, read_metrics

if TYPE_CHECKING:
    from train.rundir import RunDir

CHECKPOINT_NAME = re.compile(r"^step_(\d{7})$")
META = "meta.pt"
CHECKSUMS = "checksums.json"
PARTIAL = ".tmp"  # step_XXXXXXX.tmp/: a checkpoint being written
FREE_SPACE_MARGIN = 1.1  # a save needs this many times the last checkpoint's size free


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, unreadable or not one of ours, or cannot be written."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:07d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories in `directory` (step_XXXXXXX, complete or not), oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir())


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_NAME.match(path.name).group(1))


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when every file matches checksums.json."""
    listing = path / CHECKSUMS
    if not listing.is_file():
        return f"no {CHECKSUMS} (incomplete, or written before checksums existed)"
    try:
        recorded = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{CHECKSUMS} is damaged"
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != CHECKSUMS}
    missing = sorted(set(recorded) - present)
    if missing:
        return f"missing {', '.join(missing)}"
    for name, entry in sorted(recorded.items()):
        file = path / name
        if file.stat().st_size != entry["bytes"]:
            return f"{name} is truncated or grown ({file.stat().st_size} bytes, {entry['bytes']} recorded)"
        if sha256_of(file) != entry["sha256"]:
            return f"{name} is damaged (its sha256 differs from {CHECKSUMS})"
    return None


def newest_intact(directory: Path, logged_through: int | None = None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files all match their checksums, and each newer one passed
    over with what is wrong with it. With `logged_through` (the last step metrics.jsonl holds with
    every step before it), a checkpoint of a later step is passed over too: resuming from it would
    leave the missing records out for good, while an earlier checkpoint logs them again."""
    passed_over = []
    for path in reversed(list_checkpoints(directory)):
        problem = checkpoint_problem(path)
        if problem is None and logged_through is not None and checkpoint_step(path) > logged_through:
            problem = f"metrics.jsonl has no record of step {logged_through + 1} (a torn or lost line), which it covers"
        if problem is None:
            return path, passed_over
        passed_over.append((path, problem))
    return None, passed_over


def describe(passed_over: list[tuple[Path, str]]) -> list[str]:
    return [f"{path.name}: {problem}" for path, problem in passed_over]


def select_checkpoint(run: RunDir) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint whose steps metrics.jsonl covers (read_metrics refuses one
    damaged inside), and each newer one passed over, with why. Refuses a run whose checkpoints
    are all passed over rather than silently starting it again. Writes nothing: the launch sets
    the passed-over ones aside once it is accepted."""
    records = read_metrics(run.path) if run.metrics_path.is_file() else []
    found, passed_over = newest_intact(run.checkpoint_dir, logged_through(records))
    if found is None and passed_over:
        raise CheckpointError(
            f"no intact checkpoint in {run.checkpoint_dir} ({'; '.join(describe(passed_over))}); "
            "move those away to start the run over"
        )
    return found, passed_over


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to step_XXXXXXX.damaged (then .damaged.2, ...): kept, but no
    longer a checkpoint, so that the step can be saved again."""
    for number in range(1, 1000):
        target = path.with_name(path.name + (".damaged" if number == 1 else f".damaged.{number}"))
        if not target.exists():
            os.replace(path, target)
            fsync_dir(path.parent)
            return target
    raise CheckpointError(f"{path.parent} holds 999 damaged copies of {path.name}; clear some out")


def _write_checksums(directory: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in sorted(directory.iterdir()) if p.is_file()
    }
    atomic_write(directory / CHECKSUMS, json.dumps({"files": files}, indent=1) + "\n")


def _is_disk_full(err: BaseException) -> bool:
    """Whether a failure anywhere in `err` (DCP wraps its writers' errors) is a full disk."""
    seen, pending = set(), [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return True
        failures = current.failures.values() if isinstance(current, CheckpointException) else ()
        pending += [current.__cause__, current.__context__, *(exc for exc, _ in failures)]
        pending += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
    return False


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it "assumes" a single process when no process group exists: that is intended.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _free_space_problem(directory: Path) -> str | None:
    """Why a save would likely fill the disk: less free than the last checkpoint's size x 1.1."""
    previous = list_checkpoints(directory)
    if not previous:
        return None
    needed = FREE_SPACE_MARGIN * sum(p.stat().st_size for p in previous[-1].iterdir() if p.is_file())
    free = shutil.disk_usage(directory).free
    if free >= needed:
        return None
    return (
        f"not enough free space in {directory} for a checkpoint: {free / 1e6:,.1f} MB free, about "
        f"{needed / 1e6:,.1f} MB needed (the last one's size, +10%); free space and run again to resume from "
        f"{previous[-1].name}"
    )


def _write_failure(err: BaseException, path: Path) -> str:
    """The one line for a checkpoint whose write failed (its partial directory already removed)."""
    previous = [p.name for p in list_checkpoints(path.parent)]
    kept = f"; {previous[-1]} is intact" if previous else ""
    if _is_disk_full(err):
        return (
            f"no space left on the device while writing checkpoint {path} (ENOSPC); removed the partial "
            f"checkpoint{kept}; free space and run again to resume"
        )
    return f"writing checkpoint {path} failed ({_first_line(err)}); removed the partial checkpoint{kept}"


def save_checkpoint(
    directory: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    keep: int | None,
) -> Path:
    """Write a checkpoint from every rank, then keep only the `keep` newest (None keeps all).

    Raises CheckpointError on every rank, leaving no partial directory and the previous
    checkpoints untouched, when the disk lacks the space (checked first against the last
    checkpoint's size) or fills up while writing.
    """
    path = checkpoint_path(directory, step)
    tmp = path.with_name(path.name + PARTIAL)
    problem = None
    if is_main_process():
        for partial in directory.glob(f"step_*{PARTIAL}"):  # left by launches that died while saving, any step
            shutil.rmtree(partial)
        problem = _free_space_problem(directory)  # after those are gone: their space is free
    problem = main_process_decides(problem)
    if problem is not None:
        raise CheckpointError(problem)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        with _quiet_single_process():
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
        failure = None
    except (Exception, CheckpointException) as err:  # DCP's own type (a BaseException) wraps the writers' OSErrors
        failure = err
    barrier()
    error = None
    if is_main_process():
        try:
            if failure is not None:
                raise failure
            with open(tmp / META, "wb") as f:
                torch.save(meta | {"step": step}, f)
                f.flush()
                os.fsync(f.fileno())
            _write_checksums(tmp)  # last: a checkpoint without it is incomplete
            fsync_dir(tmp)
            os.replace(tmp, path)
            fsync_dir(directory)
        except (Exception, CheckpointException) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            error = _write_failure(err, path)
        else:
            if keep is not None:
                for old in list_checkpoints(directory)[:-keep]:
                    shutil.rmtree(old)
    error = main_process_decides(error)
    if error is not None:
        raise CheckpointError(error)
    return path


def read_meta(path: Path) -> dict[str, Any]:
    if not (path / META).is_file():
        raise CheckpointError(f"{str(path)!r} is not a checkpoint (no {META}); expected checkpoints/step_XXXXXXX/")
    try:
        meta = torch.load(path / META, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many kinds for a torn or foreign file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})") from None
    missing = {"step", "config"} - set(meta) if isinstance(meta, dict) else {"a dict"}
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an aurora-bench checkpoint (missing {sorted(missing)})")
    return meta


def checkpoint_tokenizer(meta: dict[str, Any]) -> str:
    """The tokenizer a checkpoint's model was trained with (checkpoints from before the byte
    tokenizer existed are GPT-2's)."""
    return meta["config"].get("data", {}).get("tokenizer", "gpt2")


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokenizer: str
) -> dict[str, Any]:
    """Load model and optimizer state in place (on any world size); returns the meta dict.

    Refuses a checkpoint trained with another tokenizer than `tokenizer` (the run's data.tokenizer).
    """
    meta = read_meta(path)
    if checkpoint_tokenizer(meta) != tokenizer:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with tokenizer {checkpoint_tokenizer(meta)!r}, "
            f"but data.tokenizer is {tokenizer!r}; use data of its tokenizer or another out_dir"
        )
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=path)
    except (Exception, CheckpointException) as err:  # DCP's own types; their tracebacks name no file a user can act on
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded into this model and optimizer ({_first_line(err)})"
        ) from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return meta


def _first_line(err: BaseException) -> str:
    """The first line of what went wrong, from inside DCP's wrapper when it is one."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{str(path)!r} does not exist; give a run directory or one of its checkpoints/step_XXXXXXX"
        )
    if (path / META).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {str(path)!r} is not intact: {problem}")
        return path
    found, passed_over = newest_intact(path / "checkpoints")
    if found is None:
        detail = f" ({'; '.join(describe(passed_over))})" if passed_over else ""
        raise CheckpointError(f"no intact checkpoint in {str(path)!r} (looked for checkpoints/step_XXXXXXX/){detail}")
    return found


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The trained model of a checkpoint or run directory, in eval mode, and its run config."""
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    try:
        model = build_model(meta["config"]["model"])
        state = {"model": model.state_dict()}
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=checkpoint)
        model.load_state_dict(state["model"])
    except (Exception, CheckpointException) as err:  # a model config this code cannot build, or DCP's own types
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} does not match this code's model ({_first_line(err)})"
        ) from None
    return model.to(device).eval(), meta["config"]
