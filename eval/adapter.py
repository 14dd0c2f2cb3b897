"""AuroraLM: an aurora-bench checkpoint (or an in-memory GPT) as an lm-eval model.

Importing this module registers it with lm-eval as "aurora-bench":

    import eval.adapter, lm_eval
    lm_eval.simple_evaluate(model="aurora-bench", model_args="pretrained=runs/x,batch_size=32", tasks=[...])

`pretrained=` (lm-eval's own name for the model argument, from which it names result
folders) and `checkpoint=` are the same argument. The tokenizer is the checkpoint's
(its run's data.tokenizer: GPT-2 BPE or bytes).

The command line is `python -m eval.lm_eval_cli` (lm-eval's own CLI with this
module imported). Under torchrun every process builds one AuroraLM: it joins the
process group, lm-eval hands each rank its share of the documents, and the
gather methods below bring the per-document results back to rank 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  lm-eval's own models: its registry only loads them while it is empty
import torch
import torch.distributed as dist
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from eval.scoring import check_vocabulary, positive_int, score_continuations
from optim.distributed import barrier, world
from train.checkpoint import CheckpointError, checkpoint_tokenizer, load_model, read_meta, resolve_checkpoint
from train.dist import init_runtime
from train.schema import PRECISIONS
from train.tokenizer import get_tokenizer

MODEL_NAME = "aurora-bench"


@register_model(MODEL_NAME)
class AuroraLM(TemplateLM):
    """Log-likelihoods from a GPT, with the tokenizer it was trained with.

    Give `checkpoint` or its lm-eval spelling `pretrained` (a checkpoint directory, or a run
    directory: its newest checkpoint), or `model` (an unwrapped GPT already on its device) with
    `max_length` and `tokenizer`. max_length defaults to the checkpoint's training seq_len; longer
    contexts are cut from the left (`contexts_cut` counts them). batch_size "auto" (or "auto:N",
    lm-eval's spelling) picks the largest that fits: see `auto_batch_size`.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        pretrained: str | os.PathLike | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: str = "gpt2",
        max_length: int | None = None,
        batch_size: int | str = 32,
        max_batch_size: int | None = None,
        device: str = "auto",
        precision: str = "auto",
    ):
        super().__init__()
        if checkpoint is not None and pretrained is not None:
            raise ValueError("give the checkpoint once: checkpoint=PATH or pretrained=PATH, not both")
        checkpoint = checkpoint if checkpoint is not None else pretrained
        if (checkpoint is None) == (model is None):
            raise ValueError("AuroraLM needs exactly one of checkpoint=PATH (or pretrained=PATH) or model=GPT")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.checkpoint: Path | None = None
        self.step: int | None = None
        self.config: dict[str, Any] = {}  # the checkpoint's resolved training config
        if checkpoint is not None:
            self.checkpoint = resolve_checkpoint(checkpoint).resolve()
            model, self.config = load_model(self.checkpoint, init_runtime(device_kind(device)).device)
            meta = read_meta(self.checkpoint)
            self.step = meta["step"]
            tokenizer = checkpoint_tokenizer(meta)
            max_length = max_length or training_seq_len(self.config, self.checkpoint)
        elif max_length is None:
            raise ValueError("AuroraLM(model=...) needs max_length (the training seq_len)")
        self.encoding = get_tokenizer(tokenizer)
        check_vocabulary(model, self.encoding)
        self.model = model
        self.max_length = positive_int("max_length", max_length)
        self.batch_size = resolve_batch_size(batch_size, max_batch_size, model, self.max_length)
        self.contexts_cut = 0  # scored requests whose context was cut from the left to max_length
        self._device = next(model.parameters()).device
        # autocast_context's rule for "auto", resolved so that results record what ran
        self.precision = precision if precision != "auto" else ("bf16" if self._device.type == "cuda" else "fp32")
        self._rank, self._world_size = world()

    # --- what TemplateLM asks of a model -------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.encoding.eot_token

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # No BOS; "<|endoftext|>" in text is the special token, as with Hugging Face's GPT-2 tokenizer.
        return self.encoding.encode(string, allowed_special="all")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = score_continuations(
            self.model,
            [(context, continuation) for _, context, continuation in requests],
            tokenizer=self.encoding,
            max_length=self.max_length,
            batch_size=self.batch_size,
            precision=self.precision,
            progress=not disable_tqdm and self.rank == 0,
        )
        self.contexts_cut += sum(score.context_cut for score in scores)
        return [(score.logprob, score.greedy) for score in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each whole text's log-likelihood, in windows of max_length tokens, each token predicted once."""
        windows, owners = [], []
        for owner, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1),
            ):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_NAME} scores log-likelihoods only (multiple-choice and perplexity tasks); "
            "generation tasks (generate_until) are not supported"
        )

    # --- across ranks (lm-eval calls these only when world_size > 1) ------------------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        barrier()


AUTO_BATCH_CAP = 512  # the largest batch "auto" tries; lm-eval's --max_batch_size lowers it
CPU_AUTO_BATCH = 32  # memory is not the limit on a CPU, and larger batches are no faster there


def resolve_batch_size(
    batch_size: int | str, max_batch_size: int | None, model: torch.nn.Module, max_length: int
) -> int:
    """A positive int, or "auto" / "auto:N" (lm-eval's spellings; N re-tunes in lm-eval's own
    models, here the batch is picked once) resolved by `auto_batch_size`."""
    if isinstance(batch_size, str) and batch_size.split(":")[0] == "auto":
        cap = positive_int("max_batch_size", max_batch_size) if max_batch_size is not None else AUTO_BATCH_CAP
        return auto_batch_size(model, max_length, cap)
    return positive_int("batch_size", batch_size)


def auto_batch_size(model: torch.nn.Module, max_length: int, cap: int) -> int:
    """The largest power of two up to `cap` whose full-length forward pass fits on a CUDA device
    (tried largest first; the head on 32 positions a row, more than a multiple-choice ending
    needs); min(32, cap) on a CPU, where memory is not the limit."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return min(CPU_AUTO_BATCH, cap)
    size = 1 << (cap.bit_length() - 1)
    while size > 1:
        try:
            with torch.no_grad():
                hidden = model.hidden_states(torch.zeros(size, max_length, dtype=torch.long, device=device))
                model.logits(hidden[:, -32:])
            break
        except torch.cuda.OutOfMemoryError:
            size //= 2
        finally:
            torch.cuda.empty_cache()
    return size


def device_kind(device: str) -> str:
    """auto, cpu or cuda, as train.dist takes it (each rank then uses cuda:LOCAL_RANK).

    lm-eval's CLI passes device=cuda:0 by default, GPU or not; like lm-eval's own HF
    model, an indexed cuda device that is not there falls back to auto.
    """
    if device.startswith("cuda:"):
        return "cuda" if torch.cuda.is_available() else "auto"
    return device


def training_seq_len(config: dict[str, Any], checkpoint: Path) -> int:
    try:
        return config["train"]["seq_len"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} records no train.seq_len; pass max_length explicitly"
        ) from None
