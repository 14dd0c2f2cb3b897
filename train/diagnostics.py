"""Neuron diagnostics: activation death, update leverage and starvation, weight row norms.

Pure functions do the maths (tensors in, numbers out). Two small classes hold what must
persist between diagnostics: `StarvationTracker` (each matrix's recent low-leverage rows) and
`NeuronDiagnostics` (the probe batch, the cadence, the tracker), which turns one training step
into flat metric names (train/metric_names.py). The updates come from `captured_updates` around
optimizer.step(), for any optimizer; pass the dict it fills to `measure`.
docs/neuron_death.md defines every quantity and metric name.

Every matrix is read in its TALL orientation (a wide matrix is transposed), m ≥ n, so that the
m rows are the hidden neurons for every MLP projection: rows of up/gate, columns of down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from optim.distributed import whole
from optim.groups import assign_groups
from train import metric_names
from train.data import validation_batches

NEARLY_DEAD_THRESHOLD = 0.01  # of the layer's mean |activation|
LOW_LEVERAGE_THRESHOLD = 0.1  # of the mean leverage n/m
STALE_GRADIENT_THRESHOLD = 0.01  # of the median gradient row norm: a row whose update no current gradient asks for
# Relative-leverage histogram (ℓᵢ / (n/m)): [0, 1e-3), quarter-decade bins up to 10^1.5, then
# [10^1.5, inf). Fixed, so that histograms from any run, step or shape can be compared.
LEVERAGE_HIST_EDGES = (0.0, *(10 ** (k / 4) for k in range(-12, 7)), math.inf)
# Activations whose "off" region is exactly zero; for any other, exact zeros never happen, and
# an exactly-dead count of 0 would read as "healthy" where it only means "not measurable".
RELU_FAMILY = ("relu2",)
# The optimizer attribute through which an optimizer of optim/matrix.py's family hands over the
# direction it applies (set to a dict before step()); also what an observer `needs` to get updates.
CAPTURED_UPDATES = "captured_updates"


# --- the maths ------------------------------------------------------------------------------


def tall(matrix: Tensor) -> Tensor:
    """The matrix with rows ≥ columns (a wide matrix transposed)."""
    return matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T


def coefficient_of_variation(values: Tensor) -> float:
    """Population std / mean: 0 for identical values."""
    values = values.float()
    return float(values.std(correction=0) / values.mean())


def activation_death(acts: Tensor, relu_family: bool) -> dict[str, float]:
    """Death counts of one layer's units from its activations [..., units] on the probe tokens.

    dead: units whose activation is exactly zero on every token (only when relu_family; the key
    is absent otherwise). nearly_dead: units whose mean |activation| is below 1% of the layer's
    mean |activation| (exactly-dead units included). mean_abs: the layer's mean |activation|.
    """
    acts = acts.reshape(-1, acts.shape[-1])
    unit_mean_abs = acts.abs().float().mean(dim=0)
    layer_mean_abs = unit_mean_abs.mean()
    # `== 0` keeps an all-zero layer consistent: all of it is nearly dead, not none of it.
    nearly_dead = (unit_mean_abs < NEARLY_DEAD_THRESHOLD * layer_mean_abs) | (unit_mean_abs == 0)
    death = {"units": acts.shape[1], "nearly_dead": int(nearly_dead.sum()), "mean_abs": float(layer_mean_abs)}
    if relu_family:
        death["dead"] = int((torch.count_nonzero(acts, dim=0) == 0).sum())
    return death


def update_leverage(update: Tensor) -> Tensor:
    """ℓᵢ = n·‖Tᵢ‖² / ‖T‖_F² for each row of T = tall(update), m×n.

    For a semi-orthogonal T (TᵀT = I, so ‖T‖_F² = n) these are exactly its squared row norms,
    the leverage scores: Σℓᵢ = n, mean n/m. Any other update (AdamW, a scaled Muon step, a
    parameter delta) is first scaled to ‖T‖_F² = n, so ℓ compares the SHAPE of the row-norm
    distribution, free of the lr and of per-shape scale factors.
    """
    rows_sq = tall(update.detach()).float().square().sum(dim=1)
    total = rows_sq.sum()
    if total == 0:
        raise ValueError("the leverage of an all-zero update is undefined")
    return rows_sq * (min(update.shape) / total)


def relative_leverage(update: Tensor) -> Tensor:
    """ℓᵢ / (n/m): 1 for every row of a leverage-uniform update; mean 1 always."""
    m, n = max(update.shape), min(update.shape)
    return update_leverage(update) * (m / n)


def leverage_stats(relative: Tensor) -> dict[str, float]:
    """CV, min, max and the fraction of rows below 0.1·n/m, from relative leverages ℓᵢ/(n/m)."""
    return {
        metric_names.LEVERAGE_CV: coefficient_of_variation(relative),
        metric_names.LEVERAGE_REL_MIN: float(relative.min()),
        metric_names.LEVERAGE_REL_MAX: float(relative.max()),
        metric_names.LEVERAGE_LOW_FRAC: float((relative < LOW_LEVERAGE_THRESHOLD).float().mean()),
    }


def leverage_histogram(relative: Tensor) -> list[int]:
    """Row counts in the fixed bins of LEVERAGE_HIST_EDGES: bin i is [edges[i], edges[i+1])."""
    inner_edges = torch.tensor(LEVERAGE_HIST_EDGES[1:-1], dtype=torch.float32)
    bins = torch.bucketize(relative.float().cpu(), inner_edges, right=True)
    return torch.bincount(bins, minlength=len(LEVERAGE_HIST_EDGES) - 1).tolist()


def gradient_row_norms(grad: Tensor) -> Tensor:
    """‖Gᵢ‖ for each row of tall(grad): how much the current gradient asks of each neuron."""
    return tall(grad.detach()).float().norm(dim=1)


def stale_rows(grad_rows: Tensor) -> Tensor:
    """Rows whose current gradient is below 1% of the median row's (dead units' rows: exactly 0)."""
    return grad_rows < STALE_GRADIENT_THRESHOLD * torch.quantile(grad_rows, 0.5)  # the interpolated median


def stale_update_stats(relative: Tensor, grad_rows: Tensor) -> dict[str, float]:
    """Where the update goes against what the gradient asks, from relative leverages rᵢ and
    gradient row norms of one matrix (or of pooled matrices of one shape): stale_update_frac, the
    share Σ_{i stale} rᵢ / Σ rᵢ of the update's squared norm given to stale rows; zero_grad_frac,
    the rows whose gradient is exactly zero."""
    stale = stale_rows(grad_rows)
    return {
        metric_names.STALE_UPDATE_FRAC: float(relative[stale].sum() / relative.sum()),
        metric_names.ZERO_GRAD_FRAC: float((grad_rows == 0).float().mean()),
    }


def weight_row_norm_stats(weight: Tensor) -> dict[str, float]:
    """Row norms of tall(weight): mean, CV, and min and max relative to the mean."""
    norms = tall(weight.detach()).float().norm(dim=1)
    mean = norms.mean()
    return {
        metric_names.WEIGHT_ROW_NORM_MEAN: float(mean),
        metric_names.WEIGHT_ROW_NORM_CV: coefficient_of_variation(norms),
        metric_names.WEIGHT_ROW_NORM_REL_MIN: float(norms.min() / mean),
        metric_names.WEIGHT_ROW_NORM_REL_MAX: float(norms.max() / mean),
    }


# --- the update of a step -----------------------------------------------------------------------


def measured_matrices(model: nn.Module) -> dict[str, Tensor]:
    """The matrices whose updates and weights the diagnostics measure, by parameter name: the matrix
    group of optim/groups.py (every 2-D parameter under `blocks.`)."""
    return dict(assign_groups(model)["matrix"])


@contextmanager
def captured_updates(optimizer: torch.optim.Optimizer, matrices: Mapping[str, Tensor]) -> Iterator[dict[str, Tensor]]:
    """Around one optimizer.step(): when the block ends, the dict it gave holds the update that step
    applied to each matrix, whole (also under FSDP2), by parameter name, for any optimizer.

    An optimizer with a CAPTURED_UPDATES attribute (optim/matrix.py's family) fills the dict itself
    with the direction it applies to every parameter, before the lr, its per-shape scale and the
    weight decay. Any other optimizer gets `matrices` read before the step and differenced after:
    the parameter change W_after - W_before, which holds the decay -lr·wd·W and anything else the
    step does to W (docs/neuron_death.md, "The update"). Under FSDP2 every rank must take part,
    since the changes are gathered whole; the copy taken before the step is each rank's shard.
    """
    updates: dict[str, Tensor] = {}
    if hasattr(optimizer, CAPTURED_UPDATES):
        setattr(optimizer, CAPTURED_UPDATES, updates)
        try:
            yield updates
        finally:
            setattr(optimizer, CAPTURED_UPDATES, None)  # None: capturing costs nothing on other steps
        return
    before = {name: param.detach().clone() for name, param in matrices.items()}
    yield updates
    for name, param in matrices.items():
        updates[name] = whole(param.detach().float() - before[name].float())


# --- state --------------------------------------------------------------------------------


class StarvationTracker:
    """A row is starved when its leverage was below 0.1·n/m in each of the last `window`
    diagnostics of its matrix. Keeps each matrix's last `window` low-leverage masks."""

    def __init__(self, window: int):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"diagnostics.starvation_window must be a positive integer, got {window!r}")
        self.window = window
        self.history: dict[str, deque[Tensor]] = {}

    def observe(self, name: str, relative: Tensor) -> Tensor | None:
        """Record one diagnostic's relative leverages; return the starved-row mask once `window`
        diagnostics have been seen (None before: starvation is not yet defined)."""
        masks = self.history.setdefault(name, deque(maxlen=self.window))
        masks.append((relative < LOW_LEVERAGE_THRESHOLD).cpu())
        if len(masks) < self.window:
            return None
        return torch.stack(list(masks)).all(dim=0)

    def state_dict(self) -> dict[str, Tensor]:
        """{matrix name: its masks stacked [diagnostics, rows], oldest first}: plain tensors, for any checkpoint."""
        return {name: torch.stack(list(masks)) for name, masks in self.history.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        # A different window keeps the newest masks that fit.
        self.history = {name: deque(masks.unbind(0), maxlen=self.window) for name, masks in state.items()}


class _ProbeDone(Exception):
    """Raised by the hook of the last hidden layer: nothing after it is needed (in a GPT, the
    50,304-way head, the largest cost of a probe forward at small scale)."""


class NeuronDiagnostics:
    """Activation death, update leverage, starvation and weight row norms, every `every` steps.

    model: the (unwrapped) model. probe_inputs: the fixed batch its forward takes.
    hidden_modules: names of modules whose outputs are the hidden activations [..., units].
    matrix_names: parameter names of the matrices whose updates and weights are measured.
    relu_family: whether exactly-dead units are measurable (see RELU_FAMILY).
    histogram_steps: leverage histograms are logged at the first diagnostic at or after each.
    every: measure every `every` steps (`wants`); 1, every step, for a caller that steps by hand.

    The probe forward runs under torch.no_grad() in eval mode (train mode is restored after) and
    draws no random numbers; nothing here writes to the model or the optimizer, so turning
    diagnostics on or off leaves the loss curve bit-identical.

    With FSDP2-sharded parameters (DTensors) every rank must call `measure` at the same steps:
    the probe forward and the whole weights are collectives. The probe forward then runs to
    the end, since stopping it inside an FSDP module's forward would skip its resharding.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_inputs: Tensor,
        hidden_modules: Sequence[str],
        matrix_names: Sequence[str],
        relu_family: bool,
        every: int = 1,
        starvation_window: int = 5,
        histogram_steps: Iterable[int] = (),
    ):
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"diagnostics.every must be an integer >= 0 (0: off), got {every!r}")
        self.histogram_steps = tuple(histogram_steps)
        modules = dict(model.named_modules())
        unknown = [name for name in hidden_modules if name not in modules]
        if unknown or not hidden_modules:
            raise ValueError(f"hidden modules {unknown or '(none given)'} not found in the model")
        params = dict(model.named_parameters())
        unknown = [name for name in matrix_names if name not in params or params[name].ndim != 2]
        if unknown:
            raise ValueError(f"{unknown} are not 2-D parameters of the model")
        self.model = model
        self.probe_inputs = probe_inputs
        self.hidden_modules = {name: modules[name] for name in hidden_modules}
        self.weights = {name: params[name] for name in matrix_names}
        self.relu_family = relu_family
        self.every = every
        self.sharded = any(isinstance(param, DTensor) for param in model.parameters())
        self.starvation = StarvationTracker(starvation_window)

    @classmethod
    def for_gpt(cls, model: nn.Module, probe_inputs: Tensor, every: int, **options) -> NeuronDiagnostics:
        """Diagnostics of a model/gpt.py GPT: every `blocks.{i}.mlp.hidden`, every matrix of the
        matrix group (optim/groups.py: the 2-D parameters under `blocks.`)."""
        hidden = [
            name for name, _ in model.named_modules() if metric_names.pooled_name(name) == metric_names.MLP_HIDDEN
        ]
        matrices = list(measured_matrices(model))
        relu_family = model.config.activation in RELU_FAMILY
        return cls(model, probe_inputs, hidden, matrices, relu_family, every, **options)

    @classmethod
    def from_config(
        cls, diag_cfg: Mapping[str, Any], model: nn.Module, val_files: Sequence[str | Path], seq_len: int
    ) -> NeuronDiagnostics | None:
        """From the `diagnostics` config section; None when diagnostics are off (every: 0)."""
        if not diag_cfg["every"]:
            return None
        probe = probe_batch(val_files, diag_cfg["probe_tokens"], seq_len)
        device = next(model.parameters()).device
        return cls.for_gpt(
            model,
            probe.to(device),
            diag_cfg["every"],
            starvation_window=diag_cfg["starvation_window"],
            histogram_steps=diag_cfg["histogram_steps"],
        )

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def gradient_rows(self) -> dict[str, Tensor]:
        """Each measured matrix's gradient row norms, read before the optimizer step (and before
        the gradients are zeroed): the `measure` of the same step compares the update with them."""
        return {
            name: gradient_row_norms(whole(param.grad))
            for name, param in self.weights.items()
            if param.grad is not None
        }

    def measure(
        self, step: int, updates: Mapping[str, Tensor], gradient_rows: Mapping[str, Tensor] | None = None
    ) -> dict[str, float | list[int]]:
        """All diagnostics of this step as flat `diag/...` metrics (docs/neuron_death.md).

        `updates` maps parameter names to this step's update (any scale, as `captured_updates`
        gives it); matrices absent from it, or whose update is all zero, get no leverage metrics
        and no starvation observation. `gradient_rows` (from `gradient_rows()`) adds the
        stale-update metrics.
        """
        metrics: dict[str, float | list[int]] = {}
        self._activation_metrics(metrics)
        with_histograms = any(step - self.every < wanted <= step for wanted in self.histogram_steps)
        self._leverage_metrics(metrics, updates, gradient_rows or {}, with_histograms)
        for name, weight in self.weights.items():
            weight = whole(weight.detach())
            if weight.any():  # an all-zero matrix has no row-norm distribution
                metrics.update(_named(_module(name), weight_row_norm_stats(weight)))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"starvation": self.starvation.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.starvation.load_state_dict(state["starvation"])

    # --- parts of measure ---

    @torch.no_grad()
    def _probe_deaths(self) -> dict[str, dict[str, float]]:
        deaths: dict[str, dict[str, float]] = {}

        def hook_for(name: str):
            def hook(module, inputs, output):
                deaths[name] = activation_death(output, self.relu_family)
                if len(deaths) == len(self.hidden_modules) and not self.sharded:
                    raise _ProbeDone

            return hook

        handles = [module.register_forward_hook(hook_for(name)) for name, module in self.hidden_modules.items()]
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.probe_inputs)
        except _ProbeDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        silent = [name for name in self.hidden_modules if name not in deaths]
        if silent:
            raise RuntimeError(f"hidden modules {silent} did not run in the probe forward")
        return deaths

    def _activation_metrics(self, metrics: dict) -> None:
        deaths = self._probe_deaths()
        pooled: dict[str, dict[str, float]] = {}
        for name, death in deaths.items():
            metrics.update(_named(name, _death_fractions(death)))
            if (group := metric_names.pooled_name(name)) is not None:
                total = pooled.setdefault(group, dict.fromkeys(death, 0.0))
                for key, value in death.items():  # counts add up; mean_abs pools as a unit-weighted mean
                    total[key] += value * death["units"] if key == "mean_abs" else value
        for group, total in pooled.items():
            total["mean_abs"] /= total["units"]
            metrics.update(_named(group, _death_fractions(total)))

    def _leverage_metrics(
        self, metrics: dict, updates: Mapping[str, Tensor], gradient_rows: Mapping[str, Tensor], with_histograms: bool
    ) -> None:
        pooled: dict[str, tuple[list[Tensor], list[Tensor | None], list[Tensor | None]]] = {}
        for name in self.weights:
            update = updates.get(name)
            if update is None or not update.any():
                continue
            relative = relative_leverage(update)
            starved = self.starvation.observe(name, relative)
            grads = gradient_rows.get(name)
            self._add_leverage(metrics, _module(name), relative, starved, grads, with_histograms)
            if (group := metric_names.pooled_name(_module(name))) is not None:
                for column, value in zip(pooled.setdefault(group, ([], [], [])), (relative, starved, grads)):
                    column.append(value)
        for group, (relatives, starveds, grads) in pooled.items():
            starved = None if any(s is None for s in starveds) else torch.cat(starveds)
            grad = None if any(g is None for g in grads) else torch.cat(grads)
            self._add_leverage(metrics, group, torch.cat(relatives), starved, grad, with_histograms)

    @staticmethod
    def _add_leverage(
        metrics: dict,
        name: str,
        relative: Tensor,
        starved: Tensor | None,
        grad_rows: Tensor | None,
        with_histogram: bool,
    ) -> None:
        metrics.update(_named(name, leverage_stats(relative)))
        if starved is not None:
            metrics[metric_names.diagnostic(name, metric_names.STARVED_FRAC)] = float(starved.float().mean())
        if grad_rows is not None:
            metrics.update(_named(name, stale_update_stats(relative, grad_rows.to(relative.device))))
        if with_histogram:
            metrics[metric_names.diagnostic(name, metric_names.LEVERAGE_HIST)] = leverage_histogram(relative)


def probe_batch(val_files: Sequence[str | Path], probe_tokens: int, seq_len: int) -> Tensor:
    """The fixed probe inputs [probe_tokens // seq_len, seq_len]: the first tokens of the
    validation stream, read without touching the training loader or any RNG."""
    if probe_tokens < seq_len:
        raise ValueError(f"diagnostics.probe_tokens={probe_tokens} must be at least train.seq_len={seq_len}")
    rows = probe_tokens // seq_len
    inputs, _ = next(validation_batches(val_files, rows, seq_len, rows * seq_len))
    return inputs


def _death_fractions(death: Mapping[str, float]) -> dict[str, float]:
    fractions = {
        metric_names.ACT_NEARLY_DEAD_FRAC: death["nearly_dead"] / death["units"],
        metric_names.ACT_MEAN_ABS: death["mean_abs"],
    }
    if "dead" in death:
        fractions[metric_names.ACT_DEAD_FRAC] = death["dead"] / death["units"]
    return fractions


def _module(param_name: str) -> str:
    return param_name.removesuffix(".weight")


def _named(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {metric_names.diagnostic(name, key): value for key, value in values.items()}
