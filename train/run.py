"""A run: everything its steps use, built from the config (`build_run`), then taken up where its
newest intact checkpoint left it (`resume`). train/loop.py drives it step by step.

Everything that can reject the input is checked in `build_run` and in rank 0's launch checks of
`resume`, before the run directory is written to (exit 2: nothing was changed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from model import build_model
from optim import build_optimizer
from optim.distributed import barrier, main_process_decides
from train.checkpoint import describe, load_checkpoint, read_meta, restore_rng_state, select_checkpoint, set_aside
from train.config import accumulation_steps, check_config
from train.data import TokenLoader, resolve_shards, validation_batch_count
from train.dist import Runtime, init_runtime, parallelize, set_determinism
from train.metrics import Metrics
from train.observers import Observer, RecycledUnits, check_needs, observer_class
from train.rundir import RunDir, RunDirError
from train.schedule import build_scheduler, follow_schedule, schedule_change_problem
from train.signals import StopSignals

# The meta keys under which checkpoints from before `observers` hold an observer's state.
LEGACY_OBSERVER_STATE = {"neurons": "diagnostics", "unit_trace": "unit_trace"}


@dataclass
class RunState:
    """Where the run stands after `step`; a checkpoint holds it whole (meta key "run_state")."""

    step: int = 0
    elapsed_s: float = 0.0  # training time so far, summed over launches
    skipped_steps: int = 0  # steps whose update was skipped (train.max_skipped_steps)
    last_saved: str | None = None  # the newest checkpoint's name

    @classmethod
    def from_meta(cls, meta: dict[str, Any], checkpoint: Path) -> RunState:
        """The state a checkpoint holds; one written before RunState existed keeps its parts as
        top-level meta keys."""
        saved = meta.get("run_state") or {
            "step": meta["step"],
            "elapsed_s": meta["elapsed_s"],
            "skipped_steps": meta.get("skipped_steps", 0),
        }
        return replace(cls(**saved), last_saved=checkpoint.name)


@dataclass
class Run:
    """What a run's steps use. `trained` is the module the steps run: the model, wrapped for
    DDP or sharded by FSDP2 (and compiled with train.compile, once resumed)."""

    cfg: dict[str, Any]
    runtime: Runtime
    model: torch.nn.Module
    trained: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    loader: TokenLoader
    val_files: list[Path]
    accumulation: int  # micro-batches per step on each rank
    dir: RunDir
    stop: StopSignals = field(default_factory=StopSignals)
    observers: dict[str, Observer] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics.disabled)
    state: RunState = field(default_factory=RunState)

    def close(self) -> None:
        self.metrics.close()
        self.dir.unlock()


OptimizerBuilder = Callable[[Any, torch.nn.Module], torch.optim.Optimizer]


def build_run(cfg: dict[str, Any], make_optimizer: OptimizerBuilder = build_optimizer) -> Run:
    """The run `cfg` describes, with nothing written yet: config, data, observers and their needs
    checked; the model built (seeded), wrapped, and given to `make_optimizer(cfg["optim"], model)`."""
    tcfg = cfg["train"]
    runtime = init_runtime(tcfg["device"], tcfg["timeout_s"])
    check_config(cfg, runtime.world_size)
    observer_classes = {name: observer_class(name, path) for name, path in cfg["observers"].items()}
    accumulation = accumulation_steps(tcfg["batch_tokens"], tcfg["micro_batch"], tcfg["seq_len"], runtime.world_size)
    set_determinism(cfg["seed"], tcfg["deterministic"], tcfg["threads"])
    if runtime.is_main:
        # rank 0 prepares the built-in corpus and checks the shards
        train_files, val_files = resolve_shards(cfg["data"])
    barrier()
    if not runtime.is_main:
        train_files, val_files = resolve_shards(cfg["data"], verify=False)
    micro_batch, seq_len, vocab_size = tcfg["micro_batch"], tcfg["seq_len"], cfg["model"]["vocab_size"]
    loader = TokenLoader(
        train_files, micro_batch, seq_len, runtime.rank, runtime.world_size, cfg["seed"], vocab_size=vocab_size
    )
    validation_batch_count(
        val_files, micro_batch, seq_len, cfg["data"]["val_tokens"], runtime.world_size, vocab_size=vocab_size
    )
    model = build_model(cfg["model"]).to(runtime.device)
    trained = parallelize(model, runtime, tcfg["parallelism"])
    optimizer = make_optimizer(cfg["optim"], model)
    run = Run(
        cfg,
        runtime,
        model,
        trained,
        optimizer,
        build_scheduler(optimizer, tcfg),
        loader,
        val_files,
        accumulation,
        RunDir(cfg["out_dir"]),
    )
    observer_classes["recycled_units"] = RecycledUnits  # a hook of the optimizer's config, not an observer to name
    built = {name: cls.from_run(cfg, run) for name, cls in observer_classes.items()}
    run.observers = {name: observer for name, observer in built.items() if observer is not None}
    check_needs(run.observers, optimizer)
    return run


def resume(run: Run) -> None:
    """Take the run up from its newest intact checkpoint (or from the start), once rank 0 has
    checked what can refuse the launch; then record the launch and open the metrics."""
    checkpoint, passed_over, changes, saved_config = launch_checks(run) if run.runtime.is_main else (None, [], {}, None)
    checkpoint = main_process_decides(checkpoint)
    if checkpoint is not None:
        load_run_state(run, checkpoint)
    notes = []
    if run.runtime.is_main:
        for path, _ in passed_over:
            set_aside(path)
        ns_dtype_used = getattr(run.optimizer, "ns_dtype_used", None)  # a matrix optimizer's (optim/matrix.py)
        facts = {
            "resumed_from": checkpoint.name if checkpoint else None,
            "damaged_checkpoints_passed_over": describe(passed_over),
            "ns_dtype": ns_dtype_used(run.runtime.device) if ns_dtype_used else None,
        }
        notes = run.dir.commit(run.cfg, run.runtime.world_size, changes, saved_config, **facts)
        run.metrics = Metrics.for_run(run.cfg, run.dir.path, run.state.step)
    announce(run, passed_over, notes)
    if run.cfg["train"]["compile"]:
        run.trained = torch.compile(run.trained)


def launch_checks(run: Run) -> tuple[Path | None, list[tuple[Path, str]], dict[str, Any], dict[str, Any] | None]:
    """Rank 0, before it writes anything: lock the run directory, choose the checkpoint, and
    refuse a config change the run cannot take. Returns (checkpoint, passed over, config changes,
    the checkpoint's config)."""
    run.dir.lock()
    checkpoint, passed_over = select_checkpoint(run.dir)
    saved = read_meta(checkpoint) if checkpoint else None
    changes = run.dir.changes(run.cfg, saved["config"] if saved else None)
    if "train.steps" in changes:
        problem = schedule_change_problem(changes["train.steps"][0], run.cfg["train"], saved["step"] if saved else 0)
        if problem:
            raise RunDirError(problem)
    if saved:
        run.loader.check_state(saved["loader"])
    return checkpoint, passed_over, changes, saved["config"] if saved else None


def load_run_state(run: Run, checkpoint: Path) -> None:
    """Everything the checkpoint holds, loaded into the run on every rank."""
    meta = load_checkpoint(checkpoint, run.model, run.optimizer, run.cfg["data"]["tokenizer"])
    run.scheduler.load_state_dict(meta["scheduler"])
    follow_schedule(run.scheduler, run.optimizer)
    run.loader.load_state_dict(meta["loader"])
    restore_rng_state(meta["rng"])
    run.state = RunState.from_meta(meta, checkpoint)
    states = meta.get("observers") or {name: meta.get(key) for name, key in LEGACY_OBSERVER_STATE.items()}
    for name, observer in run.observers.items():
        observer.resume(run.state.step, states.get(name))


def announce(run: Run, passed_over: list[tuple[Path, str]], notes: list[str]) -> None:
    """The launch's opening lines in the run's log (rank 0's metrics)."""
    tcfg, cfg = run.cfg["train"], run.cfg
    n_params = sum(p.numel() for p in run.model.parameters())
    run.metrics.message(
        f"model {cfg['model']['name']}: {n_params:,} parameters | optimizer {cfg['optim']['name']} | "
        f"world size {run.runtime.world_size} | {run.accumulation} micro-batches of "
        f"{tcfg['micro_batch']}x{tcfg['seq_len']} per step"
    )
    for line in describe(passed_over):
        run.metrics.message(f"passed over checkpoint {line}")
    for note in notes:
        run.metrics.message(note)
    if run.state.last_saved is not None:
        run.metrics.message(f"resuming {run.dir.path} from step {run.state.step} ({run.state.last_saved})")
