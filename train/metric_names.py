"""Every key a run writes to metrics.jsonl, defined once: the training loop and its observers
(train/loop.py, train/observers.py), the neuron diagnostics (train/diagnostics.py) and the
in-training HellaSwag score (eval/hellaswag.py) write them; the console (train/metrics.py), a
sweep's progress line (train/sweep.py) and the reports (eval/, scripts/) read them.
docs/neuron_death.md defines what each diagnostic measures.

A step's record holds STEP_KEYS, SKIPPED_STEPS when steps may be skipped, VAL_LOSS at validation
steps, HELLASWAG_KEYS at scoring steps and, at diagnostic steps, `diag/<module>/<statistic>`:
`diagnostic(module, statistic)`, where module is a model module (`blocks.3.mlp.up`, see
`block_module`) or the pooled name of every block's copy (`mlp.up`), and RECYCLED_UNITS when the
optimizer recycles units.
"""

from __future__ import annotations

import re

STEP = "step"
TOTAL_STEPS = "total_steps"
TOKENS = "tokens"
TRAIN_LOSS = "train_loss"
GRAD_NORM = "grad_norm"
LR_SCALE = "lr_scale"
TOKENS_PER_S = "tokens_per_s"
OPTIM_STEP_MS = "optim_step_ms"
ELAPSED_S = "elapsed_s"
STEP_KEYS = (STEP, TOTAL_STEPS, TOKENS, TRAIN_LOSS, GRAD_NORM, LR_SCALE, TOKENS_PER_S, OPTIM_STEP_MS, ELAPSED_S)
SKIPPED_STEPS = "skipped_steps"
VAL_LOSS = "val_loss"

# Each HellaSwag metric under its convention's name; no bare "acc_norm", which llm.c users and
# lm-eval users read differently. In quick_score's order.
HELLASWAG_LM_EVAL_ACC = "hellaswag_lm_eval_acc"
HELLASWAG_LM_EVAL_ACC_NORM = "hellaswag_lm_eval_acc_norm"
HELLASWAG_LLMC_ACC = "hellaswag_llmc_acc"
HELLASWAG_LLMC_ACC_NORM = "hellaswag_llmc_acc_norm"
HELLASWAG_N = "hellaswag_n"
HELLASWAG_KEYS = (
    HELLASWAG_LM_EVAL_ACC,
    HELLASWAG_LM_EVAL_ACC_NORM,
    HELLASWAG_LLMC_ACC,
    HELLASWAG_LLMC_ACC_NORM,
    HELLASWAG_N,
)

# --- neuron diagnostics ---------------------------------------------------------------------

DIAG_PREFIX = "diag/"
RECYCLED_UNITS = f"{DIAG_PREFIX}recycled_units"

# Statistics of a hidden layer's activations (ACT_DEAD_FRAC only for the ReLU family).
ACT_DEAD_FRAC = "act_dead_frac"
ACT_NEARLY_DEAD_FRAC = "act_nearly_dead_frac"
ACT_MEAN_ABS = "act_mean_abs"
ACTIVATION_STATS = (ACT_NEARLY_DEAD_FRAC, ACT_MEAN_ABS, ACT_DEAD_FRAC)
# Statistics of a matrix's update: its leverage, always; starvation once the window is full;
# where the update goes against the gradient, when the gradient rows were read; the histogram at
# the histogram steps.
LEVERAGE_CV = "leverage_cv"
LEVERAGE_REL_MIN = "leverage_rel_min"
LEVERAGE_REL_MAX = "leverage_rel_max"
LEVERAGE_LOW_FRAC = "leverage_low_frac"
LEVERAGE_STATS = (LEVERAGE_CV, LEVERAGE_REL_MIN, LEVERAGE_REL_MAX, LEVERAGE_LOW_FRAC)
STARVED_FRAC = "starved_frac"
STALE_UPDATE_FRAC = "stale_update_frac"
ZERO_GRAD_FRAC = "zero_grad_frac"
STALE_STATS = (STALE_UPDATE_FRAC, ZERO_GRAD_FRAC)
LEVERAGE_HIST = "leverage_hist"
# Statistics of a matrix's weight rows (per matrix only, never pooled).
WEIGHT_ROW_NORM_MEAN = "weight_row_norm_mean"
WEIGHT_ROW_NORM_CV = "weight_row_norm_cv"
WEIGHT_ROW_NORM_REL_MIN = "weight_row_norm_rel_min"
WEIGHT_ROW_NORM_REL_MAX = "weight_row_norm_rel_max"
ROW_NORM_STATS = (WEIGHT_ROW_NORM_MEAN, WEIGHT_ROW_NORM_CV, WEIGHT_ROW_NORM_REL_MIN, WEIGHT_ROW_NORM_REL_MAX)

# The MLP modules of a block (model/gpt.py): the hidden activations and the two projections.
MLP_HIDDEN, MLP_UP, MLP_DOWN = "mlp.hidden", "mlp.up", "mlp.down"
BLOCK_PREFIX = re.compile(r"blocks\.\d+\.")


def diagnostic(module: str, statistic: str) -> str:
    """The metric key of one statistic of a module (or of a pooled name)."""
    return f"{DIAG_PREFIX}{module}/{statistic}"


def block_module(index: int, part: str) -> str:
    """The module `part` (e.g. MLP_UP) of block `index`: `blocks.3.mlp.up`."""
    return f"blocks.{index}.{part}"


def pooled_name(module: str) -> str | None:
    """`blocks.3.mlp.up` → `mlp.up`: the name under which all blocks' copies are pooled; None for
    a module outside the blocks."""
    block = BLOCK_PREFIX.match(module)
    return module[block.end() :] if block else None


def every_block(part: str, statistic: str) -> re.Pattern:
    """Matches the key of `statistic` of `part` in any block (`diagnostic(block_module(i, part), statistic)`)."""
    return re.compile(re.escape(DIAG_PREFIX) + BLOCK_PREFIX.pattern + re.escape(f"{part}/{statistic}"))


# What the reports read: the pooled MLP statistics.
DEAD = diagnostic(MLP_HIDDEN, ACT_DEAD_FRAC)
NEARLY_DEAD = diagnostic(MLP_HIDDEN, ACT_NEARLY_DEAD_FRAC)
STARVED_UP = diagnostic(MLP_UP, STARVED_FRAC)
STARVED_DOWN = diagnostic(MLP_DOWN, STARVED_FRAC)
LEVERAGE_CV_UP = diagnostic(MLP_UP, LEVERAGE_CV)
LEVERAGE_HIST_UP = diagnostic(MLP_UP, LEVERAGE_HIST)
# ... and their per-block keys, for the worst block, where a pooled fraction can hide one block's collapse.
DEAD_BLOCK = every_block(MLP_HIDDEN, ACT_DEAD_FRAC)
STARVED_UP_BLOCK = every_block(MLP_UP, STARVED_FRAC)
