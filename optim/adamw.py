"""AdamW (decoupled weight decay), for the parameters that are not hidden matrices.

Same arithmetic as torch.optim.AdamW(foreach=False): bias-corrected first and second moments,
p ← p·(1 − ηλ) − η/(1 − β₁ᵗ) · m / (sqrt(v)/sqrt(1 − β₂ᵗ) + ε). The step count is a Python
int, so reading it never synchronises with the device.
"""

import torch
from torch import Tensor

ADAMW_DEFAULTS = {"betas": (0.9, 0.95), "eps": 1e-10, "weight_decay": 0.0}


def init_adamw_state(param: Tensor) -> dict:
    return {
        "step": 0,
        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
    }


def adamw_update(grad: Tensor, state: dict, lr: float, betas: tuple[float, float], eps: float) -> tuple[Tensor, float]:
    """Advance the moments in `state` by one gradient; return (direction, step size), the
    step being p ← p − step_size · direction."""
    beta1, beta2 = betas
    state["step"] += 1
    step = state["step"]
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denominator = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
    return state["exp_avg"] / denominator, lr / bias_correction1
