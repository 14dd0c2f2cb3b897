"""Scoring continuations with a GPT, and the multiple-choice maths.

`score_continuations` turns (context tokens, continuation tokens) pairs into the
continuation's summed log-probability: one forward pass per distinct pair,
pairs sorted by length and batched with right padding (causal attention keeps
the real positions blind to it), the output head run only where a continuation
token is predicted. Contexts are cut from the left to the model's length
(each score says whether its context was); continuations are never cut. Only the
tokenizer's real vocabulary takes part in the softmax, not the padding rows of
the output layer. Log-likelihood does not care how text is tokenized, so a
byte-level model scores the same tasks as a GPT-2 one.

The lm-eval adapter (eval/adapter.py) and the in-process HellaSwag scores
(eval/hellaswag.py) both go through here. No lm-eval import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from train.dist import autocast_context


class ContinuationScore(NamedTuple):
    logprob: float  # summed log-probability of the continuation's tokens
    n_tokens: int
    greedy: bool  # every continuation token is the model's most likely next token
    context_cut: bool  # the context was cut from the left to fit max_length


# (context + continuation cut to max_length + 1 tokens, continuation length):
# the model reads all tokens but the last and is scored on the last n.
Window = tuple[tuple[int, ...], int]


def positive_int(name: str, value: int | str) -> int:
    """Validate a count option (batch_size, max_length, limit), which lm-eval's CLI may pass as a string."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def make_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Window:
    if not context:
        raise ValueError("a context needs at least one token (lm-eval puts <|endoftext|> there)")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length={max_length}")
    return (tuple(context) + tuple(continuation))[-(max_length + 1) :], len(continuation)


def check_vocabulary(model: torch.nn.Module, tokenizer) -> None:
    if model.config.vocab_size < tokenizer.n_vocab:
        raise ValueError(
            f"the model's vocabulary ({model.config.vocab_size}) does not cover the {tokenizer.n_vocab} ids of its "
            f"tokenizer {tokenizer.name!r}; was it trained with another data.tokenizer?"
        )


@torch.no_grad()
def score_continuations(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    tokenizer,
    max_length: int,
    batch_size: int,
    precision: str = "auto",
    progress: bool = False,
) -> list[ContinuationScore]:
    """The score of each (context, continuation) pair of `tokenizer`'s ids, in the order given."""
    windows = [make_window(context, continuation, max_length) for context, continuation in requests]
    cut = [len(context) + len(continuation) > max_length + 1 for context, continuation in requests]
    # Identical requests (lm-eval pads uneven ranks with copies) are scored once.
    # Longest first: similar lengths share a batch, and running out of memory shows at once.
    distinct = sorted(set(windows), key=lambda w: (-len(w[0]), w))
    batches = [distinct[i : i + batch_size] for i in range(0, len(distinct), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch")
    scores: dict[Window, tuple[float, int, bool]] = {}
    for batch in batches:
        scores.update(zip(batch, _score_batch(model, batch, precision, tokenizer)))
    return [ContinuationScore(*scores[w], context_cut) for w, context_cut in zip(windows, cut)]


def _score_batch(
    model: torch.nn.Module, batch: Sequence[Window], precision: str, tokenizer
) -> list[tuple[float, int, bool]]:
    """(logprob, n_tokens, greedy) of each window."""
    device = next(model.parameters()).device
    width = max(len(tokens) for tokens, _ in batch) - 1
    inputs = torch.full((len(batch), width), tokenizer.eot_token, dtype=torch.long)
    rows, positions, targets = [], [], []
    for row, (tokens, n) in enumerate(batch):
        inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        rows += [row] * n
        positions += range(len(tokens) - 1 - n, len(tokens) - 1)
        targets += tokens[len(tokens) - n :]
    rows_t, positions_t = torch.tensor(rows, device=device), torch.tensor(positions, device=device)
    with autocast_context(precision, device):
        # A 50k-wide head is most of a small model's cost; run it only where a continuation token is predicted.
        logits = model.logits(model.hidden_states(inputs.to(device))[rows_t, positions_t])
    picked = logits[:, : tokenizer.n_vocab].float().log_softmax(-1)
    targets_t = torch.tensor(targets, device=device)
    token_logprobs = picked.gather(1, targets_t[:, None]).squeeze(1).double().cpu()
    token_greedy = (picked.argmax(-1) == targets_t).cpu()
    lengths = [n for _, n in batch]
    return [
        (logprob.sum().item(), n, bool(greedy.all()))
        for logprob, greedy, n in zip(token_logprobs.split(lengths), token_greedy.split(lengths), lengths)
    ]


def predictions(logprobs: Sequence[float], lengths: Sequence[float]) -> tuple[int, int]:
    """(the choice with the highest log-likelihood, the one with the highest log-likelihood per unit length).

    lm-eval's acc_norm measures length in characters, llm.c's in tokens (the lowest
    mean per-token loss). The first choice wins a tie, as with numpy/torch argmax.
    """
    pred = max(range(len(logprobs)), key=lambda i: logprobs[i])
    pred_norm = max(range(len(logprobs)), key=lambda i: logprobs[i] / lengths[i])
    return pred, pred_norm


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and lm-eval's standard error of it (sample std / sqrt(n)); None below two values.

    fsum makes both independent of the order of `values`, so ranks can gather in any order.
    """
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
