"""A GPT in the modded-nanoGPT style, configured by one dataclass.

Parameter names are part of the project's contract: optim/groups.py assigns
optimizer rules by them (blocks.*.2-D -> matrix optimizer, embed, lm_head, and
everything else 1-D -> AdamW). nn.Linear weights are (out, in), so an MLP
up-projection of expansion E is tall (E*d x d): its rows are the hidden neurons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu2", "swiglu", "gelu")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257, padded to a multiple of 128
    n_layer: int = 12
    n_head: int = 6
    head_dim: int = 128
    d_model: int = 768
    mlp_expansion: float = 4.0
    activation: str = "relu2"
    bias: bool = False
    norm_gain: bool = True  # RMSNorm with a learned gain
    qk_norm: bool = True  # parameter-free RMS norm of queries and keys
    rope_base: float = 1024.0
    rope_fraction: float = 0.5  # share of head dims that rotate ("half-truncated" RoPE)
    attn_scale: float | None = 0.12  # None: 1/sqrt(head_dim)
    logit_softcap: float | None = 15.0  # None: no cap

    def __post_init__(self) -> None:
        positive = ("vocab_size", "n_layer", "n_head", "head_dim", "d_model")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.mlp_expansion <= 0:
            raise ValueError(f"model.mlp_expansion must be positive, got {self.mlp_expansion}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.head_dim % 4:
            raise ValueError(f"model.head_dim must be a multiple of 4 for RoPE, got {self.head_dim}")
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"model.rope_fraction must be in [0, 1], got {self.rope_fraction}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"model.logit_softcap must be positive or null, got {self.logit_softcap}")

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_expansion * self.d_model))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"name"})
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SoftCap(torch.autograd.Function):
    """cap * x / sqrt(x^2 + cap^2), the track's logit soft-cap, with a hand-written backward.

    Autograd through the plain expression keeps several full-vocabulary temporaries
    and was 5x slower on CPU than this version, which saves one tensor and reuses it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: float) -> torch.Tensor:
        inv_norm = x.square().add_(cap * cap).rsqrt_()
        ctx.save_for_backward(inv_norm)
        ctx.cap = cap
        return (x * inv_norm).mul_(cap)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inv_norm,) = ctx.saved_tensors
        return inv_norm.pow(3).mul_(ctx.cap**3).mul_(grad), None


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return SoftCap.apply(x, cap)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, gain: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight)


class Rotary(nn.Module):
    """RoPE on the first `rope_fraction` of each head's dims; the rest keep position-free."""

    def __init__(self, head_dim: int, base: float, fraction: float):
        super().__init__()
        quarter = head_dim // 4
        rotating = round(fraction * 2 * quarter)
        freqs = (1.0 / base) ** torch.linspace(0, 1, steps=rotating, dtype=torch.float32)
        freqs = torch.cat([freqs, freqs.new_zeros(2 * quarter - rotating)])
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, T, D]
        positions = torch.arange(x.size(-2), device=x.device, dtype=torch.float32)
        theta = torch.outer(positions, self.freqs.to(x.device))
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        inner = cfg.n_head * cfg.head_dim
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.out = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base, cfg.rope_fraction)
        self.qk_norm = cfg.qk_norm
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = cfg.mlp_hidden
        self.activation = cfg.activation
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        if cfg.activation == "swiglu":
            self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        # The hidden activations pass through this module so that diagnostics can
        # read them with a forward hook without the MLP knowing about diagnostics.
        self.hidden = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.up(x)
        if self.activation == "relu2":
            h = F.relu(u).square()
        elif self.activation == "gelu":
            h = F.gelu(u)
        else:
            h = F.silu(self.gate(x)) * u
        return self.down(self.hidden(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_gain)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_gain)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_norm = RMSNorm(cfg.d_model, cfg.norm_gain)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_gain)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                # Uniform with std 0.5/sqrt(fan_in), as in modded-nanoGPT.
                bound = math.sqrt(3.0) * 0.5 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)
        # Zero-initialised residual projections: every block starts as the identity.
        for block in self.blocks:
            block.attn.out.weight.zero_()
            block.mlp.down.weight.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final normed hidden states [B, T, D] that the head reads."""
        x = self.embed_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 (soft-capped) logits for hidden states of any leading shape.

        Separate from hidden_states so that a scorer can run the 50k-wide head only at
        the positions it needs.
        """
        logits = self.lm_head(hidden).float()
        if self.config.logit_softcap is not None:
            logits = softcap(logits, self.config.logit_softcap)
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] when targets is None, else the mean cross-entropy loss."""
        logits = self.logits(self.hidden_states(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(cfg: Mapping[str, Any]) -> GPT:
    """Build a GPT from a model config mapping (conf/model/*.yaml)."""
    return GPT(GPTConfig.from_mapping(cfg))
