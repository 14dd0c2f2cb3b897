"""Cost of one neuron diagnostic against one training step (docs/neuron_death.md#cost).

python scripts/bench_diagnostics.py --steps 16 [hydra overrides]   # composes experiment=neuron_death
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from model import build_model
from optim import build_optimizer
from train.config import accumulation_steps, compose_config
from train.data import TokenLoader, resolve_shards
from train.diagnostics import NeuronDiagnostics, captured_updates
from train.dist import set_determinism


def benchmark_overhead(cfg: dict[str, Any], steps: int) -> dict[str, float]:
    """Median seconds of a training step and of one diagnostic on `cfg`: `measure`, plus what
    capturing the updates adds to a step (the optimizer's own direction, or the parameter change of
    an optimizer that captures none: train/diagnostics.py captured_updates). Steps with and without
    a diagnostic alternate, so that load from other processes hits both alike."""
    tcfg = cfg["train"]
    set_determinism(cfg["seed"], tcfg["deterministic"], tcfg["threads"])
    train_files, val_files = resolve_shards(cfg["data"])
    loader = TokenLoader(train_files, tcfg["micro_batch"], tcfg["seq_len"], 0, 1, cfg["seed"])
    accum = accumulation_steps(tcfg["batch_tokens"], tcfg["micro_batch"], tcfg["seq_len"], 1)
    model = build_model(cfg["model"])
    optimizer = build_optimizer(cfg["optim"], model)
    every_step = {**cfg["diagnostics"], "every": 1, "histogram_steps": ()}
    diagnostics = NeuronDiagnostics.from_config(every_step, model, val_files, tcfg["seq_len"])
    step_s, diag_s, capture_s = [], [], []
    for step in range(1, steps + 1):
        capture = step % 2 == 0  # every other step, to time what capturing the updates adds to a step
        started = time.perf_counter()
        for _ in range(accum):
            inputs, targets = loader.next_batch()
            (model(inputs, targets) / accum).backward()
        with captured_updates(optimizer, diagnostics.weights) if capture else nullcontext() as updates:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stepped = time.perf_counter()
        (capture_s if capture else step_s).append(stepped - started)
        if capture:
            diagnostics.measure(step, updates)
            diag_s.append(time.perf_counter() - stepped)
    warm_step_s = statistics.median(step_s[1:])  # step 1 warms up
    measure_s = statistics.median(diag_s)
    capture_overhead_s = max(0.0, statistics.median(capture_s) - warm_step_s)
    warm_diag_s = measure_s + capture_overhead_s
    every = cfg["diagnostics"]["every"]
    return {
        "train_step_s": warm_step_s,
        "measure_s": measure_s,
        "capture_s": capture_overhead_s,
        "diagnostic_s": warm_diag_s,
        "diagnostic_per_step": warm_diag_s / warm_step_s,
        "every": every,
        "overhead_at_every": warm_diag_s / (every * warm_step_s) if every else 0.0,
        "smallest_every_within_2pct": math.ceil(warm_diag_s / (0.02 * warm_step_s)),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Cost of one neuron diagnostic against one training step.")
    parser.add_argument(
        "--steps", type=int, default=12, help="timed steps (half with a diagnostic; the first is a warm-up)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=neuron_death)")
    args = parser.parse_args(argv)
    cfg = compose_config(["experiment=neuron_death", *args.overrides])
    result = benchmark_overhead(cfg, args.steps)
    model = cfg["model"]
    print(
        f"model {model['name']} (d_model {model['d_model']}, {model['n_layer']} layers, "
        f"MLP x{model['mlp_expansion']}), "
        f"optim {cfg['optim']['name']}, {cfg['train']['batch_tokens']} tokens/step, "
        f"probe {cfg['diagnostics']['probe_tokens']} "
        f"tokens, torch {torch.__version__}, {torch.get_num_threads()} threads, medians over {args.steps} steps"
    )
    print(
        f"train step {result['train_step_s'] * 1000:.0f} ms | one diagnostic {result['diagnostic_s'] * 1000:.0f} ms "
        f"(measure {result['measure_s'] * 1000:.0f} + update capture {result['capture_s'] * 1000:.0f}; "
        f"{100 * result['diagnostic_per_step']:.1f}% of a step) | every {result['every']}: "
        f"{100 * result['overhead_at_every']:.2f}% of training time | smallest every within 2%: "
        f"{result['smallest_every_within_2pct']}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
