"""Where a run's numbers go: metrics.jsonl, the console (and console.log), W&B.

Each sink has `log(record)` and `close()`. Only rank 0 builds sinks; other ranks
get an empty `Metrics` whose calls do nothing. metrics.jsonl is the source of
truth; W&B mirrors it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from train.files import append_durably, atomic_write, naming, read_jsonl
from train.metric_names import (
    ELAPSED_S,
    GRAD_NORM,
    HELLASWAG_LLMC_ACC_NORM,
    HELLASWAG_LM_EVAL_ACC_NORM,
    HELLASWAG_N,
    LR_SCALE,
    STEP,
    TOKENS_PER_S,
    TOTAL_STEPS,
    TRAIN_LOSS,
    VAL_LOSS,
)

DISCARDED = "metrics.discarded.jsonl"


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """metrics.jsonl, appended to. Opening it for a launch that starts at `resume_step` (0 for a
    fresh start) first sets aside what an interrupted launch logged after that step; `notes`
    says what was set aside or repaired."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.notes = self._set_aside_records_after(resume_step) if path.exists() else []
        self.file = open(path, "a")

    def _set_aside_records_after(self, step: int) -> list[str]:
        """Move records logged after `step` to metrics.discarded.jsonl, and a torn last line (a
        crash mid-write) with them, as {"torn_line": ...}.

        They belong to a launch that died before its next checkpoint (or before its first one:
        then the run restarts from step 0); the resumed run logs those steps again. Nothing is
        deleted. A damaged line before the last one is not a crash's trace: it is refused.
        """
        lines, torn = read_jsonl(self.path)
        kept, stale = [], []
        for line in lines:
            (stale if line.value.get(STEP, -1) > step else kept).append(line)
        set_aside = [line.text for line in stale] + ([json.dumps({"torn_line": torn})] if torn is not None else [])
        if not set_aside:
            return []
        append_durably(self.path.with_name(DISCARDED), "".join(text + "\n" for text in set_aside))
        atomic_write(self.path, "".join(line.text + "\n" for line in kept))
        notes = []
        if stale:
            steps = [line.value[STEP] for line in stale]
            notes.append(
                f"set aside {len(stale)} record(s) of steps {min(steps)}-{max(steps)}, logged after step {step} by an "
                f"interrupted launch, in {DISCARDED}"
            )
        if torn is not None:
            notes.append(
                f"repaired the torn last line of {self.path.name} (a crash mid-write); it is kept in {DISCARDED}"
            )
        return notes

    def log(self, record: dict[str, Any]) -> None:
        with naming(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def sync(self) -> None:
        """Make every logged record durable (at each checkpoint)."""
        with naming(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


CONSOLE_FIELDS = (
    (TRAIN_LOSS, ".4f"),
    (VAL_LOSS, ".4f"),
    (GRAD_NORM, ".3g"),
    (LR_SCALE, ".3f"),
    (TOKENS_PER_S, ",.0f"),
    (HELLASWAG_LLMC_ACC_NORM, ".4f"),
    (HELLASWAG_LM_EVAL_ACC_NORM, ".4f"),
)


def format_record(record: dict[str, Any]) -> str:
    parts = [f"step {record[STEP]}/{record[TOTAL_STEPS]}"]
    for key, fmt in CONSOLE_FIELDS:
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:{fmt}}")
    parts.append(f"{record[ELAPSED_S]:.1f}s")
    return " | ".join(parts)


class ConsoleSink:
    """A one-line progress bar on a terminal, plain log lines otherwise (both go to console.log)."""

    def __init__(self, console_log: Path, every: int):
        self.path = console_log
        self.file = open(console_log, "a")
        self.every = every
        self.tty = sys.stdout.isatty()

    def message(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K")
        print(text, flush=True)
        with naming(self.path):
            self.file.write(text + "\n")
            self.file.flush()

    def log(self, record: dict[str, Any]) -> None:
        line = format_record(record)
        last = record[STEP] == record[TOTAL_STEPS]
        if record[STEP] % self.every == 0 or VAL_LOSS in record or HELLASWAG_N in record or last:
            with naming(self.path):
                self.file.write(line + "\n")
                self.file.flush()
            if not self.tty:
                print(line, flush=True)
        if self.tty:
            done = record[STEP] / record[TOTAL_STEPS]
            bar = "#" * int(30 * done)
            sys.stdout.write(f"\r\033[K[{bar:<30}] {line}")
            sys.stdout.flush()
            if VAL_LOSS in record or last:
                sys.stdout.write("\n")

    def close(self) -> None:
        self.file.close()


SWEEP_ENV = "AURORA_BENCH_SWEEP"  # set by a sweep for its runs: their W&B group


def wandb_tags(cfg: dict[str, Any]) -> list[str]:
    """The user's tags, then optimizer, MLP expansion and recipe, so W&B can filter by them."""
    auto = [f"optim:{cfg['optim']['name']}", f"mlp_x{float(cfg['model']['mlp_expansion']):g}"]
    if cfg.get("recipe"):
        auto.append(f"recipe:{cfg['recipe']}")
    return list(dict.fromkeys([*(cfg["wandb"].get("tags") or []), *auto]))


class WandbSink:
    def __init__(self, cfg: dict[str, Any], out_dir: Path):
        import wandb  # heavy: imported only when W&B is on

        wb = cfg["wandb"]
        self.run = wandb.init(
            mode=wb["mode"],
            project=wb["project"],
            entity=wb.get("entity"),
            group=wb.get("group") or os.environ.get(SWEEP_ENV),
            tags=wandb_tags(cfg),
            name=out_dir.name,
            dir=str(out_dir),
            config=cfg,
            resume="allow",
            id=None if wb["mode"] == "disabled" else wandb_run_id(out_dir),
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != STEP}, step=record[STEP])

    def close(self) -> None:
        self.run.finish()


WANDB_ID = "wandb_id"  # in the run directory


def wandb_run_id(out_dir: Path) -> str:
    """The run directory's W&B run id, so that every launch of a run (and its evals) continues one
    W&B run, also after the directory is moved. Kept in out_dir/wandb_id, which the first call
    writes: derived from the directory's absolute path, as it was before the file existed, so that
    older runs keep their id."""
    path = Path(out_dir) / WANDB_ID
    if path.is_file():
        return path.read_text().strip()
    run_id = hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]
    atomic_write(path, run_id + "\n")
    return run_id


class Metrics:
    """The logger the training loop talks to."""

    def __init__(self, sinks: list[Sink], console: ConsoleSink | None, jsonl: JsonlSink | None = None):
        self.sinks = sinks
        self.console = console
        self.jsonl = jsonl

    @classmethod
    def disabled(cls) -> Metrics:
        return cls([], None)

    @classmethod
    def for_run(cls, cfg: dict[str, Any], out_dir: Path, resume_step: int) -> Metrics:
        """The sinks of a launch that starts after `resume_step` (0: from the beginning)."""
        console = ConsoleSink(out_dir / "console.log", cfg["train"]["log_every"])
        jsonl = JsonlSink(out_dir / "metrics.jsonl", resume_step)
        sinks: list[Sink] = [jsonl, console]
        if cfg["wandb"]["mode"] != "disabled":
            sinks.append(WandbSink(cfg, out_dir))
        metrics = cls(sinks, console, jsonl)
        for note in jsonl.notes:
            metrics.message(note)
        return metrics

    def sync(self) -> None:
        if self.jsonl is not None:
            self.jsonl.sync()

    def message(self, text: str) -> None:
        if self.console is not None:
            self.console.message(text)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl. A torn last line (a run writing it, or one that
    crashed mid-write) is left out; a damaged line before it is an error naming the file."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {str(run_dir)!r} a run directory?")
    return [line.value for line in read_jsonl(path)[0]]


def logged_through(records: list[dict[str, Any]]) -> int:
    """The last step S such that every step 1..S has a record (0 when step 1 has none)."""
    logged = {record.get(STEP) for record in records}
    step = 0
    while step + 1 in logged:
        step += 1
    return step
