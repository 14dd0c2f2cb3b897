"""Adam-mini (Zhang et al. 2024, "Adam-mini: Use Fewer Learning Rates To Gain More", arXiv 2406.16793):
Adam with one second moment per block of parameters instead of one per coordinate, the blocks
following the Hessian's block structure. The partition is the authors' (github.com/zyushun/Adam-mini,
adam_mini/adam_mini.py, version 1.1.1), stated for our GPT's parameter names:

    parameter                               one second moment per
    --------------------------------------  ---------------------------------------------------------
    embed.weight, lm_head.weight            row (token)
    blocks.*.attn.q / .k weights            head (its head_dim rows)
    blocks.*.attn.v weight                  row (output neuron); with value_blocks="matrix", the matrix
    blocks.*.attn.out, .mlp.* weights       row (output neuron)
    any bias                                coordinate (Adam)
    every other 1-D parameter (RMSNorm)     tensor

A parameter no rule names is refused, so a new kind of parameter gets a deliberate block.
Written here rather than taken from pytorch-optimizer: its AdamMini has the authors' version 1.0
partition (embedding and head per coordinate, Q and K per head, every other matrix one block), finds
blocks by other codebases' names, and takes a model instead of param groups (docs/optimizers.md,
"Adam-mini, native").
"""

import math
import re

import torch
from torch import Tensor

from .matrix import closure_loss, require

ROW, HEAD, COORDINATE, TENSOR = "row", "head", "coordinate", "tensor"
VALUE = "value"  # ROW or, with value_blocks="matrix", TENSOR
VALUE_BLOCKS = {"row": ROW, "matrix": TENSOR}
PARTITION_RULES = (
    (re.compile(r"\.bias$"), COORDINATE),
    (re.compile(r"^(embed|lm_head)\.weight$"), ROW),
    (re.compile(r"^blocks\.\d+\.attn\.[qk]\.weight$"), HEAD),
    (re.compile(r"^blocks\.\d+\.attn\.v\.weight$"), VALUE),
    (re.compile(r"^blocks\.\d+\.(attn\.out|mlp\.(up|gate|down))\.weight$"), ROW),
    (re.compile(r"norm\.weight$"), TENSOR),
)


def partition(name: str, value_blocks: str) -> str:
    """The block kind of the parameter called `name` (ROW, HEAD, COORDINATE or TENSOR)."""
    for pattern, kind in PARTITION_RULES:
        if pattern.search(name):
            return VALUE_BLOCKS[value_blocks] if kind == VALUE else kind
    raise ValueError(f"Adam-mini has no block rule for parameter {name!r}; add one to optim/adam_mini.py")


def block_count(kind: str, shape: torch.Size, n_head: int) -> int:
    """How many blocks (second moments) a parameter of `shape` has: its rows, heads, coordinates, or 1."""
    if kind == ROW:
        return shape[0]
    if kind == HEAD:
        return n_head
    return math.prod(shape) if kind == COORDINATE else 1


@torch.no_grad()
def adam_mini_update(
    param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: int, lr: float, betas, eps: float, weight_decay: float
) -> None:
    """One Adam-mini step on `param` in place; m (param's shape) and v (blocks x 1) are its moments
    before step `step` (counted from 1) and are updated in place. Each block is a run of len(v)
    equal consecutive pieces of param's flat order: v holds the mean of grad² over each."""
    beta1, beta2 = betas
    blocks = v.shape[0]
    if weight_decay > 0:
        param.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).add_(grad.square().view(blocks, -1).mean(dim=1, keepdim=True), alpha=1 - beta2)
    denominator = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    step_size = (1 / (1 - beta1**step)) / denominator
    param.sub_((m.view(blocks, -1) * step_size).view_as(param).mul_(lr))


class AdamMini(torch.optim.Optimizer):
    """Adam-mini on param groups that name their parameters (`param_names`, as optim/build.py gives
    them); each group's lr, betas, eps and weight_decay apply to its parameters (decoupled decay)."""

    # A per-head or per-matrix block spans FSDP2's row shards: its mean needs a reduction across
    # ranks (the authors all-reduce it), which this class does not do; 2 replicated ranks are exact.
    supports_fsdp2 = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        n_head: int,
        value_blocks: str = "row",
    ):
        require(lr >= 0, "lr", lr, ">= 0")
        require(all(0 <= beta < 1 for beta in betas), "betas", betas, "in [0, 1)")
        require(eps >= 0 and weight_decay >= 0, "eps and weight_decay", (eps, weight_decay), ">= 0")
        require(isinstance(n_head, int) and n_head > 0, "n_head", n_head, "a positive integer (model.n_head)")
        require(value_blocks in VALUE_BLOCKS, "value_blocks", value_blocks, f"one of {tuple(VALUE_BLOCKS)}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.blocks: dict[Tensor, int] = {}  # parameter -> its number of blocks, from its name
        for group in self.param_groups:
            if "param_names" not in group:
                raise ValueError("Adam-mini partitions parameters by name: give it param groups with param_names")
            for name, param in zip(group["param_names"], group["params"]):
                kind = partition(name, value_blocks)
                if kind == HEAD and param.shape[0] % n_head:
                    raise ValueError(f"{name} has {param.shape[0]} rows, not a multiple of n_head={n_head}")
                self.blocks[param] = block_count(kind, param.shape, n_head)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(param)
                    state["v"] = param.new_zeros(self.blocks[param], 1)
                state["step"] += 1
                adam_mini_update(
                    param,
                    param.grad,
                    state["m"],
                    state["v"],
                    state["step"],
                    group["lr"],
                    group["betas"],
                    group["eps"],
                    group["weight_decay"],
                )
        return loss
