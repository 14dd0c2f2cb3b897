"""Per-unit traces of the MLP up-projections: what the gradient, the momentum and the update do to
each neuron, step by step, for studying how units die (docs/neuron_death.md#why-units-die-under-aurora).

Every `diagnostics.trace_every` steps, for each block's `mlp.up` (its rows are the units), after
the optimizer step:

    grad        ‖Gᵢ‖, the step's gradient row
    momentum    ‖Mᵢ‖, the optimizer's momentum row (AdamW: its first moment)
    update      ‖Uᵢ‖ / mean_j ‖Uⱼ‖, the update direction's row norm against the matrix's mean row
    push        ΔWᵢ·x̄, how far the step moved the unit's mean pre-activation, with x̄ the mean
                input to the MLP on the probe batch (its first-order effect, inputs held fixed)
    push_decay  the part of it that weight decay made: −ηλ Wᵢ·x̄
    push_top    the same for the unit's largest pre-activation: ΔWᵢ·x*, with x* the probe input
                where the unit's pre-activation is largest (what decides exact death)
    push_top_decay  weight decay's part of push_top
    own, drift  since the previous trace, how the unit's pre-activation on the probe token where it
                was largest then has moved: by the unit's own weights, (W − W′)ᵢ·x, and by the
                drift of its input (everything before it in the network), W′ᵢ·(x − x′), where ′
                marks the previous trace (0 at the first trace); own + drift is the whole change
    pre_mean    the unit's mean pre-activation on the probe
    pre_max     its largest; a ReLU² unit is exactly dead when pre_max ≤ 0

stored in <run>/unit_trace.pt as {"steps": [...], "blocks": [...], name: float32 [steps, blocks, units]},
written atomically at every checkpoint and at the end, and cut back to the checkpoint on resume.
One process only (it reads whole weights and the optimizer's state directly).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from train.files import atomic_write

QUANTITIES = (
    "grad",
    "momentum",
    "update",
    "push",
    "push_decay",
    "push_top",
    "push_top_decay",
    "own",
    "drift",
    "pre_mean",
    "pre_max",
)
TRACE_FILE = "unit_trace.pt"
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


class UnitTracer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, probe_inputs: Tensor, every: int):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"diagnostics.trace_every must be a positive integer, got {every!r}")
        names = sorted(
            (n for n, _ in model.named_modules() if re.fullmatch(r"blocks\.\d+\.mlp\.up", n)),
            key=lambda n: int(n.split(".")[1]),
        )
        modules = dict(model.named_modules())
        self.model, self.optimizer, self.probe_inputs, self.every = model, optimizer, probe_inputs, every
        self.blocks = names
        self.ups: list[nn.Linear] = [modules[name] for name in names]
        self.records: dict[str, list[Tensor]] = {name: [] for name in QUANTITIES}
        self.steps: list[int] = []
        self._before: list[Tensor] = []
        self._grads: list[Tensor] = []
        # at the previous trace, per block: the weights, each unit's top probe token and its input there
        self._previous: list[tuple[Tensor, Tensor, Tensor]] | None = None

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def before_step(self) -> None:
        """Read the weights and gradient rows the step starts from."""
        self._before = [up.weight.detach().float().clone() for up in self.ups]
        self._grads = [
            up.weight.grad.float().norm(dim=1) if up.weight.grad is not None else torch.zeros(up.out_features)
            for up in self.ups
        ]

    @torch.no_grad()
    def after_step(self, step: int, updates: Mapping[str, Tensor], decays: Mapping[str, float]) -> None:
        """Record the step: `updates` as optimizer.captured_updates holds them, `decays` the ηλ of
        each block's mlp.up weight (its weight-decay factor this step)."""
        inputs, tops, pre_mean, pre_max, probe_inputs, top_tokens = self._probe()
        rows = {name: [] for name in QUANTITIES}
        previous = self._previous or [None] * len(self.ups)
        for name, up, before, grad, x_bar, x_top, mean, high, x_all, then in zip(
            self.blocks, self.ups, self._before, self._grads, inputs, tops, pre_mean, pre_max, probe_inputs, previous
        ):
            weight = up.weight.detach().float()
            update = updates.get(f"{name}.weight")
            update_rows = update.float().norm(dim=1) if update is not None else torch.zeros(up.out_features)
            state = self.optimizer.state.get(up.weight, {})
            momentum = next((state[k] for k in MOMENTUM_KEYS if k in state), None)
            decay = decays.get(f"{name}.weight", 0.0)
            rows["grad"].append(grad.cpu())
            rows["momentum"].append(
                momentum.float().norm(dim=1).cpu() if momentum is not None else torch.zeros(up.out_features)
            )
            rows["update"].append((update_rows / update_rows.mean().clamp_min(1e-30)).cpu())
            rows["push"].append(((weight - before) @ x_bar).cpu())
            rows["push_decay"].append((-decay * (before @ x_bar)).cpu())
            rows["push_top"].append(((weight - before) * x_top).sum(dim=1).cpu())
            rows["push_top_decay"].append((-decay * (before * x_top).sum(dim=1)).cpu())
            if then is None:
                rows["own"].append(torch.zeros(up.out_features))
                rows["drift"].append(torch.zeros(up.out_features))
            else:
                weight_then, token_then, x_then = then
                x_now = x_all[token_then]  # the same probe tokens, through the network as it is now
                rows["own"].append(((weight - weight_then) * x_now).sum(dim=1).cpu())
                rows["drift"].append((weight_then * (x_now - x_then)).sum(dim=1).cpu())
            rows["pre_mean"].append(mean.cpu())
            rows["pre_max"].append(high.cpu())
        for name in QUANTITIES:
            self.records[name].append(torch.stack(rows[name]))
        self.steps.append(step)
        self._previous = [
            (up.weight.detach().float().clone(), token, x) for up, token, x in zip(self.ups, top_tokens, tops)
        ]

    def _probe(self) -> tuple[list[Tensor], ...]:
        """Per block: the mean MLP input, the input at each unit's largest pre-activation
        [units, d], the units' mean and max pre-activation, all inputs [tokens, d], and each
        unit's top token."""
        found: dict[int, tuple[Tensor, ...]] = {}

        def hook_for(index: int):
            def hook(module, args, output):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                u = output.reshape(-1, output.shape[-1]).float()
                high, where = u.max(dim=0)
                found[index] = (x.mean(dim=0), x[where], u.mean(dim=0), high, x, where)

            return hook

        handles = [up.register_forward_hook(hook_for(i)) for i, up in enumerate(self.ups)]
        was_training = self.model.training
        self.model.eval()
        try:
            self.model.hidden_states(self.probe_inputs)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        return tuple([found[i][k] for i in range(len(self.ups))] for k in range(6))

    def state(self) -> dict:
        return {
            "steps": list(self.steps),
            "blocks": list(self.blocks),
            **{name: torch.stack(values) if values else torch.empty(0) for name, values in self.records.items()},
        }

    def checkpoint_state(self) -> dict:
        """What own/drift of the next trace start from (for a checkpoint's meta, so that a resumed
        run traces exactly what an uninterrupted one does)."""
        return {"previous": self._previous}

    def save(self, run_dir: Path) -> Path:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        return atomic_write(run_dir / TRACE_FILE, buffer.getvalue())

    def resume(self, run_dir: Path, step: int, checkpoint_state: dict | None) -> None:
        """Keep the traced steps up to `step` (the checkpoint resumed from) of an earlier launch,
        and go on from the checkpoint's `checkpoint_state()`."""
        self._previous = (checkpoint_state or {}).get("previous")
        path = run_dir / TRACE_FILE
        if not path.is_file():
            return
        saved = torch.load(path, weights_only=True)
        keep = [i for i, s in enumerate(saved["steps"]) if s <= step]
        self.steps = [saved["steps"][i] for i in keep]
        # a quantity an older trace lacks is NaN at its steps
        self.records = {
            name: [
                saved[name][i] if name in saved else torch.full_like(saved["pre_max"][i], float("nan")) for i in keep
            ]
            for name in QUANTITIES
        }


def load_trace(run_dir: str | Path) -> dict:
    """A run's unit trace: {"steps": [...], "blocks": [...], quantity: [steps, blocks, units]}."""
    path = Path(run_dir) / TRACE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run with diagnostics.trace_every > 0")
    return torch.load(path, weights_only=True)
