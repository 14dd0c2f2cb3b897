"""Optimizers that each break one promise of `python -m optim.check` (tests/test_optim_check.py):
the check must catch every one. Plain torch.optim.Optimizer subclasses, as a user would write."""

import time

import torch
import torch.distributed as dist
from torch.optim import SGD, Adam, Optimizer


class ForgetsState(Adam):
    """Its state dict leaves the moments out."""

    def state_dict(self):
        return {**super().state_dict(), "state": {}}


class IgnoresSchedule(Optimizer):
    """Steps with the lr it was built with, whatever the schedule sets."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})
        self.fixed_lr = lr

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-self.fixed_lr)


class NormalizedWithoutEpsilon(Optimizer):
    """Divides by the gradient's norm: NaN on a zero gradient."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad / param.grad.norm(), alpha=-group["lr"])


class TakesAnything(SGD):
    """Swallows any keyword, so a misspelt option passes silently."""

    def __init__(self, params, lr=0.01, **ignored):
        super().__init__(params, lr=lr)


class ClockDependent(SGD):
    """Its step depends on the clock, not only on the seed."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group["lr"] * (1 + time.perf_counter_ns() % 7))


class DropsGroups(SGD):
    """Keeps the first param group only."""

    def __init__(self, params, lr=0.01):
        super().__init__(list(params)[:1], lr=lr)


class RankDependent(SGD):
    """Moves each rank's parameters differently."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step()
        if dist.is_initialized():
            for group in self.param_groups:
                for param in group["params"]:
                    param.add_(1e-3 * dist.get_rank())


class PlainTensorMomentum(Optimizer):
    """Keeps momentum in plain tensors of the parameter's global shape: sharded DTensors break it."""

    def __init__(self, params, lr=0.01, momentum=0.9):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "buffer" not in state:
                    state["buffer"] = torch.zeros(param.shape)
                state["buffer"].mul_(group["momentum"]).add_(param.grad)
                param.add_(state["buffer"], alpha=-group["lr"])


class PlainTensorMomentumNoFsdp(PlainTensorMomentum):
    """The same, refusing FSDP2 as the harness asks."""

    supports_fsdp2 = False
