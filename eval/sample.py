"""Generate text from a trained model: what to try first after training.

    python -m eval.sample runs/quickstart/aurora-seed0 --prompt "ROMEO:" --tokens 300
    python -m eval.sample RUN_OR_CHECKPOINT --prompt "..." --tokens N [--temperature 0.8]
                          [--top-k 50] [--samples 1] [--seed 0] [--device auto|cpu|cuda]

Works with a checkpoint of either tokenizer (GPT-2 BPE or bytes: its run's data.tokenizer).
Sampling is seeded, so the same command prints the same text; --temperature 0 is greedy. The
context is the last train.seq_len tokens (the length the model was trained on); generation
stops early at an end-of-document token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from eval.scoring import positive_int
from train.checkpoint import checkpoint_tokenizer, load_model, read_meta, resolve_checkpoint
from train.cli import exit_code
from train.dist import pick_device
from train.tokenizer import get_tokenizer


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    n_tokens: int,
    max_length: int,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """The text `model` continues `prompt` with: up to n_tokens tokens, sampled from the
    softmax at `temperature` over the top_k most likely (greedy at temperature 0)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = tokenizer.encode(prompt, allowed_special="all") or [tokenizer.eot_token]
    start = len(ids)
    for _ in range(n_tokens):
        context = torch.tensor([ids[-max_length:]], device=device)
        logits = model.logits(model.hidden_states(context)[:, -1])[0, : tokenizer.n_vocab].float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                logits[logits < logits.topk(top_k).values[-1]] = -float("inf")
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        if token == tokenizer.eot_token:
            break
        ids.append(token)
    return tokenizer.decode(ids[start:])


def load_for_sampling(target: str, device: str = "auto"):
    """(model, tokenizer, training seq_len) of a run directory or checkpoint."""
    checkpoint = resolve_checkpoint(target)
    model, config = load_model(checkpoint, pick_device(device, 0))
    return model, get_tokenizer(checkpoint_tokenizer(read_meta(checkpoint))), config["train"]["seq_len"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="a run directory (its newest checkpoint) or a checkpoint directory")
    parser.add_argument("--prompt", default="", help="text to continue (default: the start of a document)")
    parser.add_argument(
        "--tokens", type=lambda v: positive_int("--tokens", v), default=200, help="tokens to generate (default: 200)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default: 0.8)")
    parser.add_argument(
        "--top-k",
        type=lambda v: positive_int("--top-k", v),
        default=50,
        help="sample among the k most likely (default: 50)",
    )
    parser.add_argument(
        "--samples",
        type=lambda v: positive_int("--samples", v),
        default=1,
        help="how many samples, seeds seed, seed+1, ...",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    model, tokenizer, seq_len = load_for_sampling(args.target, args.device)
    for k in range(args.samples):
        text = generate(
            model, tokenizer, args.prompt, args.tokens, seq_len, args.temperature, args.top_k, args.seed + k
        )
        header = (
            f"--- sample {k + 1} (seed {args.seed + k}, {tokenizer.name} tokens, temperature {args.temperature:g}) ---"
        )
        print(f"{header}\n{args.prompt}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
