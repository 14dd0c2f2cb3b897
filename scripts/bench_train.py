"""Training throughput (forward, backward, optimizer step) of model presets, per data tokenizer.

    python scripts/bench_train.py                                      # tiny on GPT-2 tokens and on bytes
    python scripts/bench_train.py --model gpt124m --data fineweb10b --optim adamw aurora --device cuda
    python scripts/bench_train.py --data shakespeare_bytes --optim muon aurora --ns-dtype auto bfloat16

Each row times `--steps` steps of one micro-batch after a warm-up step (median), on random token
ids of the data config's tokenizer: a preset's vocabulary, and so its output layer, follows the
data (50,304 for GPT-2, 320 for bytes). With several --data, the last column compares each row
with the first data's row of the same model and optimizer, measured in this same run. Each
--ns-dtype (default: the configs' own, auto) is one more row for every matrix optimizer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model import build_model
from optim import build_optimizer
from optim.polar import NS_DTYPES
from train.config import compose_config
from train.rundir import describe_hardware, hardware
from train.tokenizer import get_tokenizer


def time_steps(
    model_name: str,
    data: str,
    optim_name: str,
    ns_dtype: str | None,
    micro_batch: int,
    seq_len: int,
    steps: int,
    device: str,
) -> dict:
    overrides = [f"model={model_name}", f"data={data}", f"optim={optim_name}"]
    cfg = compose_config(overrides + ([f"optim.matrix.ns_dtype={ns_dtype}"] if ns_dtype else []))
    torch.manual_seed(0)
    model = build_model(cfg["model"]).to(device)
    optimizer = build_optimizer(cfg["optim"], model)
    n_vocab = get_tokenizer(cfg["data"]["tokenizer"]).n_vocab
    tokens = torch.randint(0, n_vocab, (micro_batch, seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast:
            loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times[1:])
    return {
        "model": model_name,
        "data": f"{data} ({cfg['data']['tokenizer']}, vocab {cfg['model']['vocab_size']:,})",
        "params": sum(p.numel() for p in model.parameters()),
        "optim": optim_name + (f" ({optimizer.ns_dtype_used(torch.device(device))} polar)" if ns_dtype else ""),
        "batch": f"{micro_batch}x{seq_len}",
        "step_s": step_s,
        "tokens_per_s": micro_batch * seq_len / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["tiny"])
    parser.add_argument("--data", nargs="+", default=["shakespeare", "shakespeare_bytes"], help="conf/data options")
    parser.add_argument("--optim", nargs="+", default=["adamw"])
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ns-dtype", nargs="+", choices=NS_DTYPES, help="polar dtypes to time matrix optimizers at")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    machine = describe_hardware(hardware())
    print(f"# {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.device}")
    print(f"| model | data | params | optimizer | batch | step (s) | tokens/s | vs {args.data[0]} |")
    print("|---|---|---:|---|---|---:|---:|---:|")
    rows = [
        (model_name, optim_name, ns_dtype)
        for model_name in args.model
        for optim_name in args.optim
        for ns_dtype in ([None] if optim_name == "adamw" or not args.ns_dtype else args.ns_dtype)
    ]
    for model_name, optim_name, ns_dtype in rows:
        first = None
        for data in args.data:
            r = time_steps(
                model_name, data, optim_name, ns_dtype, args.micro_batch, args.seq_len, args.steps, args.device
            )
            first = first or r["tokens_per_s"]
            print(
                f"| {r['model']} | {r['data']} | {r['params']:,} | {r['optim']} | {r['batch']} | {r['step_s']:.3f} | "
                f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / first:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
