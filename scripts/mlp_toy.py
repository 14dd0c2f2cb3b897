"""The seed tutorial's toy: an MLP classifier with tall hidden layers, trained with Adam, Muon and
Aurora while watching how many hidden neurons stay active and how evenly the updates reach them.

    python scripts/mlp_toy.py                              # offline: scikit-learn's 8x8 digits, 64→512→512→10
    python scripts/mlp_toy.py --data mnist                 # MNIST through `datasets` (online), 784→512→512→10
    python scripts/mlp_toy.py --steps 1000 --lr-mult 4 --width 2048 --seeds 0 1 2

The hidden weights (layers.*.weight) take the matrix optimizer (Muon or Aurora; Adam: AdamW with
no weight decay); biases and the output layer take AdamW. With digits the first hidden weight is
tall (512×64: its 512 rows are the neurons); with MNIST it is wide unless --width > 784. The
diagnostics are train/diagnostics.py's (docs/neuron_death.md), on the held-out set as the probe.
Writes mlp_toy.md (the table) and mlp_toy.png (curves) under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optim import AdamW, Aurora, Muon
from train.cli import exit_code
from train.diagnostics import NeuronDiagnostics
from train.fetch import hub_unreachable_reason
from train.metric_names import (
    ACT_DEAD_FRAC,
    ACT_NEARLY_DEAD_FRAC,
    LEVERAGE_CV,
    LEVERAGE_LOW_FRAC,
    STARVED_FRAC,
    STEP,
    diagnostic,
)

OPTIMIZERS = ("adam", "muon", "aurora")
ADAM_LR = 1e-3  # Adam on everything, and AdamW for biases and the output layer under Muon/Aurora
MATRIX_LR = 0.02  # Muon/Aurora on the hidden weights (times sqrt(max(1, rows/cols)))
# Polar Express's 5 steps instead of the GPT default's 12: the same polar factor, at a cost that
# keeps the default run under a minute on 2 CPU cores.
POLAR = dict(ns_method="polar_express", ns_steps=5, ns_dtype="auto")
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 1234  # the train/held-out split is fixed, whatever --seeds
TEST_ACC = "test_acc"  # a record's held-out accuracy, beside the diagnostics' keys (train/metric_names.py)


class ToyDataError(OSError):
    """The asked-for data set cannot be had here."""


class TallMLP(nn.Module):
    """inputs → width → ... → width → classes, ReLU; `acts.i` modules carry the hidden activations."""

    def __init__(self, inputs: int, width: int, classes: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(inputs if i == 0 else width, width) for i in range(depth))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.head(x)


def hidden_module(layer: int) -> str:
    """The module of TallMLP whose output is hidden layer `layer`'s activations."""
    return f"acts.{layer}"


def matrix_module(layer: int) -> str:
    """The linear module of TallMLP that makes hidden layer `layer` (a matrix the optimizer updates)."""
    return f"layers.{layer}"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST (train + test, 70,000 images) from the Hugging Face Hub, or from the local cache."""
    if hub_unreachable_reason() is not None:
        # Only the local cache can help, and asking for it must not wait on retries.
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    try:
        splits = load_dataset("ylecun/mnist")
    except Exception as err:  # datasets raises many kinds; all mean "no MNIST here"
        raise ToyDataError(
            f"MNIST needs the Hugging Face Hub (huggingface.co), which is not reachable, and is not "
            f"in the local cache ({type(err).__name__}); run with --data digits for the offline toy"
        ) from None
    images, labels = [], []
    for split in splits.values():
        images.append(np.stack([np.asarray(image, dtype=np.float32).reshape(-1) / 255.0 for image in split["image"]]))
        labels.append(np.asarray(split["label"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def split(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, ...]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    held = int(HOLDOUT_FRACTION * len(x))
    test, train = order[:held], order[held:]
    return torch.from_numpy(x[train]), torch.from_numpy(y[train]), torch.from_numpy(x[test]), torch.from_numpy(y[test])


def build_optimizer(name: str, model: TallMLP, lr_mult: float) -> torch.optim.Optimizer:
    hidden = [(n, p) for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2]
    rest = [(n, p) for n, p in model.named_parameters() if not (n.startswith("layers.") and p.ndim == 2)]

    def group(pairs, **options) -> dict:
        return {"params": [p for _, p in pairs], "param_names": [n for n, _ in pairs], **options}

    adamw_rest = group(rest, kind="adamw", lr=ADAM_LR * lr_mult, weight_decay=0.0)
    if name == "adam":
        return AdamW([group(hidden), adamw_rest], lr=ADAM_LR * lr_mult, weight_decay=0.0)
    matrix_class = {"muon": Muon, "aurora": Aurora}[name]
    return matrix_class([group(hidden), adamw_rest], lr=MATRIX_LR * lr_mult, weight_decay=0.0, **POLAR)


def train_one(name: str, data: tuple[torch.Tensor, ...], args: argparse.Namespace, seed: int) -> list[dict]:
    """Train one optimizer; return the diagnostics history (one record per diagnostic step)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = TallMLP(x_train.shape[1], args.width, int(y_train.max()) + 1, args.depth)
    optimizer = build_optimizer(name, model, args.lr_mult)
    depth = range(args.depth)
    diagnostics = NeuronDiagnostics(
        model,
        x_test,
        hidden_modules=[hidden_module(i) for i in depth],
        matrix_names=[f"{matrix_module(i)}.weight" for i in depth],
        relu_family=True,
        every=args.diag_every,
        starvation_window=args.starvation_window,
    )
    batches = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x_train), generator=batches), 0

    def record(step: int, updates: dict) -> dict:
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(dim=1) == y_test).float().mean())
        return {STEP: step, TEST_ACC: accuracy, **diagnostics.measure(step, updates)}

    history = [record(0, {})]  # at initialisation: units can be born dead, before any update
    for step in range(1, args.steps + 1):
        if position + args.batch > len(order):
            order, position = torch.randperm(len(x_train), generator=batches), 0
        index = order[position : position + args.batch]
        position += args.batch
        loss = F.cross_entropy(model(x_train[index]), y_train[index])
        loss.backward()
        optimizer.captured_updates = {} if diagnostics.wants(step) else None  # filled by step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if optimizer.captured_updates is not None:
            history.append(record(step, optimizer.captured_updates))
    return history


def value(history: list[dict], key: str, at_start: bool) -> float | None:
    """The last logged value of `key` (or the first, at step 0); None when never logged
    (starvation is absent until the window has filled)."""
    values = [record[key] for record in history if key in record]
    return None if not values else values[0] if at_start else values[-1]


def table(results: dict[tuple[str, int], list[dict]], depth: int) -> str:
    layers = range(depth)
    columns = [("test acc", TEST_ACC, False)]  # (title, metric, at step 0 instead of the end)
    columns += [(f"dead L{i} @0", diagnostic(hidden_module(i), ACT_DEAD_FRAC), True) for i in layers]
    for title, stat in (("dead", ACT_DEAD_FRAC), ("nearly dead", ACT_NEARLY_DEAD_FRAC)):
        columns += [(f"{title} L{i}", diagnostic(hidden_module(i), stat), False) for i in layers]
    for title, stat in (("starved", STARVED_FRAC), ("low leverage", LEVERAGE_LOW_FRAC), ("leverage CV", LEVERAGE_CV)):
        columns += [(f"{title} W{i}", diagnostic(matrix_module(i), stat), False) for i in layers]
    lines = [
        "| optimizer | seed | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for (name, seed), history in results.items():
        cells = [value(history, key, at_start) for _, key, at_start in columns]
        lines.append(f"| {name} | {seed} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def plot(results: dict[tuple[str, int], list[dict]], depth: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (  # (title, the module of layer i and its statistic; None: the accuracy)
        ("exactly-dead fraction (probe: held-out set)", (hidden_module, ACT_DEAD_FRAC)),
        ("starved fraction (update leverage < 0.1 n/m, k diagnostics)", (matrix_module, STARVED_FRAC)),
        ("update leverage CV", (matrix_module, LEVERAGE_CV)),
        ("held-out accuracy", None),
    )
    colors = {name: f"C{i}" for i, name in enumerate(OPTIMIZERS)}
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (panel_title, layer_metric) in zip(axes.flat, panels):
        for (name, seed), history in results.items():
            if layer_metric is None:
                series = [(TEST_ACC, "")]
            else:
                module, stat = layer_metric
                series = [(diagnostic(module(i), stat), f" L{i}") for i in range(depth)]
            for layer, (metric, suffix) in enumerate(series):
                points = [(r[STEP], r[metric]) for r in history if metric in r]
                if points:
                    steps, values = zip(*points)
                    label = f"{name}{suffix}" if seed == min(s for _, s in results) else None
                    ax.plot(
                        steps,
                        values,
                        color=colors[name],
                        linestyle=styles[layer % len(styles)],
                        label=label,
                        alpha=0.85,
                    )
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--lr-mult", type=float, default=1.0, help="multiplies every lr")
    parser.add_argument("--diag-every", type=int, default=10)
    parser.add_argument("--starvation-window", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/mlp_toy"))
    args = parser.parse_args(argv)
    for key in ("steps", "batch", "width", "depth", "diag_every"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # matrices this small gain nothing from more threads, and lose much on a busy machine
    x, y = load_mnist() if args.data == "mnist" else load_digits()
    data = split(x, y)
    started = time.perf_counter()
    results = {(name, seed): train_one(name, data, args, seed) for seed in args.seeds for name in args.optimizers}
    sizes = "→".join(str(n) for n in [x.shape[1], *[args.width] * args.depth, int(y.max()) + 1])
    settings = (
        f"{args.data} {sizes} (first hidden weight {args.width}x{x.shape[1]}), ReLU; {len(data[0])} train / "
        f"{len(data[2])} held-out (probe and accuracy) examples; {args.steps} steps of batch {args.batch}; "
        f"seeds {args.seeds}; lr Adam {ADAM_LR * args.lr_mult:g}, Muon/Aurora {MATRIX_LR * args.lr_mult:g} "
        f"({POLAR['ns_method']} {POLAR['ns_steps']} steps, {POLAR['ns_dtype']}), no weight decay; "
        f"diagnostics every {args.diag_every} steps, starvation window {args.starvation_window}; "
        f"torch {torch.__version__}; {time.perf_counter() - started:.0f} s"
    )
    when = (
        f"Values at the last diagnostic step, '@0' at initialisation "
        f"(starved: '-' before {args.starvation_window} diagnostics)."
    )
    text = f"{settings}\n\n{when}\n\n{table(results, args.depth)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlp_toy.md").write_text(text)
    plot(results, args.depth, args.out / "mlp_toy.png", settings[: settings.index(";")])
    print(text)
    print(f"outputs:\n  {args.out / 'mlp_toy.md'}\n  {args.out / 'mlp_toy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
