"""What watches a run: the Observer protocol, the observers of this package, and their loading.

The config's `observers` section names each observer by the import path of its class, so that
one from outside the package needs no edit here:

    observers:
      validation: train.observers.Validation
      mine: my_package.MyObserver

or on the command line `+observers.mine=my_package.MyObserver` (its module on PYTHONPATH);
`~observers.NAME` removes one.

The run builds each with `cls.from_run(cfg, run)` (None: its own settings turn it off, or this
rank takes no part) before anything is written, and refuses one that needs an optimizer attribute
the optimizer lacks. Every step, each observer that `wants(step)` gets:

    before_step(step)                   the gradients are in place, the update is not applied yet
    after_step(step, record, updates)   after the update and zero_grad: add metrics to `record`
                                        (the step's line of metrics.jsonl); `updates` are the
                                        updates the step applied, by parameter name, when an
                                        observer of the step needs CAPTURED_UPDATES, else None
                                        (train/diagnostics.py captured_updates: any optimizer)

An observer that needs the updates misses a step whose update was skipped (there is none). At
each checkpoint the run stores `state_dict()` in the checkpoint and calls `save()` (write your
own files now); a resumed run calls `resume(step, state)` with what the checkpoint holds.
Observers only observe: they must not change the model, the optimizer or any random state, so
that the loss curve is the same with any set of them (RESUMABLE_CHANGES lets `observers.` change).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from optim.distributed import mean_over_ranks
from optim.imports import import_object
from optim.recycle import recycled_total
from train.config import ConfigError
from train.data import validation_batches
from train.diagnostics import CAPTURED_UPDATES, NeuronDiagnostics, probe_batch
from train.dist import Runtime, autocast_context
from train.metric_names import RECYCLED_UNITS, VAL_LOSS
from train.schedule import validation_due
from train.unit_trace import UnitTracer

if TYPE_CHECKING:
    from train.run import Run

OBSERVER_METHODS = ("from_run", "wants", "before_step", "after_step", "state_dict", "resume", "save")


class Observer:
    """The protocol (see the module docstring), with hooks that do nothing: a subclass overrides
    `from_run`, `wants` and the hooks it uses. A class need not subclass it to be an observer."""

    # CAPTURED_UPDATES: the step's updates, which the loop captures for any optimizer; any other
    # entry names an attribute of the optimizer that it reads (check_needs)
    needs: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> Observer | None:
        raise NotImplementedError

    def wants(self, step: int) -> bool:
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int, record: dict[str, Any], updates: Mapping[str, torch.Tensor] | None) -> None:
        pass

    def state_dict(self) -> Any:
        return None

    def resume(self, step: int, state: Any) -> None:
        """Go on from the checkpoint of `step`, whose state_dict() was `state` (None when the
        checkpoint has none for it)."""

    def save(self) -> None:
        pass


def observer_class(name: str, path: Any) -> type:
    """The class `observers.<name>` names by import path; ConfigError when there is none, or it
    lacks a method of the protocol."""
    try:
        found = import_object(path, f"observers.{name}", "train.observers.Validation")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    missing = [method for method in OBSERVER_METHODS if not callable(getattr(found, method, None))]
    if not isinstance(found, type) or missing:
        lacking = f"it lacks {', '.join(missing)}" if missing else "it is not a class"
        raise ConfigError(f"observers.{name}: {path!r} is not an Observer ({lacking}; see train/observers.py)")
    return found


def check_needs(observers: Mapping[str, Observer], optimizer: torch.optim.Optimizer) -> None:
    """Refuse an observer that needs an attribute the optimizer lacks, before the first step
    (CAPTURED_UPDATES is no attribute to check: the loop captures the updates of any optimizer)."""
    for name, observer in observers.items():
        missing = [need for need in observer.needs if need != CAPTURED_UPDATES and not hasattr(optimizer, need)]
        if missing:
            raise ConfigError(
                f"observers.{name} ({type(observer).__name__}) needs the optimizer's {', '.join(missing)}, which "
                f"{type(optimizer).__name__} does not provide; turn it off (its settings, or ~observers.{name}) "
                "or use an optimizer that has it"
            )


class Validation(Observer):
    """val_loss at the steps `validation_due` names: the mean loss over data.val_tokens of the
    validation split, averaged over ranks (every rank takes part)."""

    def __init__(
        self,
        cfg: dict[str, Any],
        model: torch.nn.Module,
        val_files: list[Path],
        runtime: Runtime,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.tcfg, self.val_tokens = cfg["train"], cfg["data"]["val_tokens"]
        self.model, self.val_files, self.runtime, self.optimizer = model, val_files, runtime, optimizer

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> Validation:
        return cls(cfg, run.model, run.val_files, run.runtime, run.optimizer)

    def wants(self, step: int) -> bool:
        return validation_due(step, self.tcfg)

    def after_step(self, step: int, record: dict[str, Any], updates: Mapping[str, torch.Tensor] | None) -> None:
        tcfg, runtime = self.tcfg, self.runtime
        batches = validation_batches(
            self.val_files, tcfg["micro_batch"], tcfg["seq_len"], self.val_tokens, runtime.rank, runtime.world_size
        )
        with evaluation_point(self.optimizer):
            record[VAL_LOSS] = evaluate(self.model, batches, runtime.device, tcfg["precision"])


@contextmanager
def evaluation_point(optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Inside, the parameters are at the point the optimizer evaluates: a Schedule-Free optimizer's
    average x (its eval()), back at its gradient point y after (its train(), which rounds: y is
    recomputed from x and z). An optimizer without both methods evaluates where it trains."""
    switches = optimizer is not None and all(callable(getattr(optimizer, name, None)) for name in ("eval", "train"))
    if switches:
        optimizer.eval()
    try:
        yield
    finally:
        if switches:
            optimizer.train()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterator, device: torch.device, precision: str) -> float:
    """Mean loss over `batches`, averaged over ranks."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for inputs, targets in batches:
        with autocast_context(precision, device):
            total += model(inputs.to(device), targets.to(device)).float()
        count += 1
    model.train()
    return mean_over_ranks(total / count).item()


class NeuronDeath(Observer):
    """The per-layer neuron diagnostics of train/diagnostics.py every diagnostics.every steps
    (docs/neuron_death.md): on rank 0 alone with replicated parameters; on every rank under FSDP2,
    whose probe forward and whole weights need them all (only rank 0 logs)."""

    needs = (CAPTURED_UPDATES,)

    def __init__(self, diagnostics: NeuronDiagnostics):
        self.diagnostics = diagnostics
        self.gradient_rows: dict[str, torch.Tensor] = {}

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> NeuronDeath | None:
        sharded = run.runtime.distributed and cfg["train"]["parallelism"] == "fsdp2"
        if not (run.runtime.is_main or sharded):
            return None
        seq_len = cfg["train"]["seq_len"]
        diagnostics = NeuronDiagnostics.from_config(cfg["diagnostics"], run.model, run.val_files, seq_len)
        return cls(diagnostics) if diagnostics is not None else None

    def wants(self, step: int) -> bool:
        return self.diagnostics.wants(step)

    def before_step(self, step: int) -> None:
        self.gradient_rows = self.diagnostics.gradient_rows()

    def after_step(self, step: int, record: dict[str, Any], updates: Mapping[str, torch.Tensor] | None) -> None:
        record.update(self.diagnostics.measure(step, updates, self.gradient_rows))

    def state_dict(self) -> dict[str, Any]:
        return self.diagnostics.state_dict()

    def resume(self, step: int, state: Any) -> None:
        if state is not None:
            self.diagnostics.load_state_dict(state)


class UnitTrace(Observer):
    """Per-unit traces of every mlp.up every diagnostics.trace_every steps into the run's
    unit_trace.pt (train/unit_trace.py); one process only."""

    needs = (CAPTURED_UPDATES,)

    def __init__(self, tracer: UnitTracer, run_dir: Path):
        self.tracer, self.run_dir = tracer, run_dir
        self.decays: dict[str, float] = {}

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> UnitTrace | None:
        diag = cfg["diagnostics"]
        if not diag["trace_every"] or not run.runtime.is_main:
            return None
        probe = probe_batch(run.val_files, diag["probe_tokens"], cfg["train"]["seq_len"]).to(run.runtime.device)
        return cls(UnitTracer(run.model, run.optimizer, probe, diag["trace_every"]), run.dir.path)

    def wants(self, step: int) -> bool:
        return self.tracer.wants(step)

    def before_step(self, step: int) -> None:
        self.tracer.before_step()
        groups = self.tracer.optimizer.param_groups
        # each weight's decay factor ηλ this step: the lr moves on after the step
        self.decays = {name: g["lr"] * g["weight_decay"] for g in groups for name in g.get("param_names", [])}

    def after_step(self, step: int, record: dict[str, Any], updates: Mapping[str, torch.Tensor] | None) -> None:
        self.tracer.after_step(step, updates, self.decays)

    def state_dict(self) -> dict[str, Any]:
        return self.tracer.checkpoint_state()

    def resume(self, step: int, state: Any) -> None:
        self.tracer.resume(self.run_dir, step, state)

    def save(self) -> None:
        self.tracer.save(self.run_dir)


class RecycledUnits(Observer):
    """RECYCLED_UNITS, the units recycled so far (optim/recycle.py), at the neuron
    diagnostics' steps. Not named in `observers`: the run adds it when optim.matrix.recycle_after
    asks for recycling. It reads the recycling counters from the optimizer's state, so it serves
    any optimizer that keeps them."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int):
        self.optimizer, self.every = optimizer, every

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> RecycledUnits | None:
        every = cfg["diagnostics"]["every"]
        if not (cfg["optim"]["matrix"].get("recycle_after") and every and run.runtime.is_main):
            return None
        return cls(run.optimizer, every)

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def after_step(self, step: int, record: dict[str, Any], updates: Mapping[str, torch.Tensor] | None) -> None:
        recycled = recycled_total(self.optimizer)
        if recycled is not None:
            record[RECYCLED_UNITS] = int(recycled)
