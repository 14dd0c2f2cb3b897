"""What the distributed matrix optimizer sends each step, on paper, for a model preset.

    python scripts/comm_volume.py                                   # gpt124m on 8 and 64 ranks
    python scripts/comm_volume.py --model gpt1b --world-sizes 8 64 512

For each world size W it prints, per rank and optimizer step: the bytes received by the
all-gather of orthogonalised updates as optim/distributed.py builds it (whole matrices of all
same-shape stacks shared out by cost, the buffer padded to the busiest rank's bytes), the
unpadded ideal ((W−1)/W of all updates), DDP's ring all-reduce of every gradient for scale,
and the busiest rank's orthogonalisation work over the mean. Updates in fp32 without
per-matrix state (Muon; NorMuon and Aurora's warm start add m floats per matrix).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from model import build_model
from optim.distributed import owners_by_stack, polar_cost, rank_totals
from optim.groups import assign_groups
from train.cli import exit_code
from train.config import group_options, model_preset

FP32_BYTES = 4


def matrix_stacks(model_name: str) -> tuple[list[tuple[int, int, int]], int]:
    """(count, rows, cols) of each same-shape stack of the matrix group, in model order, and
    the model's parameter count; the model is built on the meta device (no memory)."""
    presets = group_options("model")
    if model_name not in presets:
        raise ValueError(f"--model must be one of {presets}, got {model_name!r}")
    with torch.device("meta"):
        model = build_model(model_preset(model_name))
    shapes = Counter(tuple(param.shape) for _, param in assign_groups(model)["matrix"])
    return [(count, rows, cols) for (rows, cols), count in shapes.items()], sum(p.numel() for p in model.parameters())


def volume_rows(stacks: list[tuple[int, int, int]], parameters: int, world_sizes: list[int]) -> list[list[str]]:
    piece_bytes = [rows * cols * FP32_BYTES for _, rows, cols in stacks]
    total = sum(count * size for (count, _, _), size in zip(stacks, piece_bytes))
    rows = []
    for world_size in world_sizes:
        owners = owners_by_stack(stacks, world_size)
        work = rank_totals([polar_cost(r, c) for _, r, c in stacks], owners, world_size)
        busiest = max(rank_totals(piece_bytes, owners, world_size))
        rows.append(
            [
                str(world_size),
                f"{(world_size - 1) * busiest / 1e6:,.0f} MB",
                f"{(world_size - 1) / world_size * total / 1e6:,.0f} MB",
                f"{2 * (world_size - 1) / world_size * parameters * FP32_BYTES / 1e6:,.0f} MB",
                f"{max(work) / (sum(work) / world_size):.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt124m", help="a preset of conf/model/")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args(argv)
    if any(w < 1 for w in args.world_sizes):
        raise ValueError(f"--world-sizes must be >= 1, got {args.world_sizes}")
    stacks, parameters = matrix_stacks(args.model)
    matrices = sum(count for count, _, _ in stacks)
    print(
        f"{args.model}: {parameters:,} parameters; {matrices} matrices in the matrix group: "
        + ", ".join(f"{count} of {rows}x{cols}" for count, rows, cols in stacks)
    )
    header = [
        "W",
        "optimizer all-gather (as built)",
        "unpadded ideal",
        "DDP gradient all-reduce",
        "busiest rank's polar work / mean",
    ]
    print("| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
    for row in volume_rows(stacks, parameters, args.world_sizes):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code(main))
