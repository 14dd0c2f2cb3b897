"""Training-loader throughput on the built-in corpus, in tokens/s.

    python scripts/bench_loader.py [--micro-batch 16] [--seq-len 256] [--seconds 5]

Prepares the built-in corpus first if needed ($AURORA_BENCH_DATA/shakespeare).
Times next_batch() only: memory-mapped reads, the shuffled gather, int64 tensors.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from train.corpus import ensure_builtin_corpus
from train.data import TokenLoader
from train.fetch import data_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    data_dir = ensure_builtin_corpus(data_root() / "shakespeare")
    loader = TokenLoader(sorted(data_dir.glob("shakespeare_train_*.bin")), args.micro_batch, args.seq_len)
    loader.next_batch()  # first epoch's permutation and page-cache warm-up stay out of the timing
    batches, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < args.seconds:
        loader.next_batch()
        batches += 1
    tokens = batches * args.micro_batch * args.seq_len
    print(
        f"loader: {tokens / elapsed:,.0f} tokens/s  ({batches} batches of {args.micro_batch}x{args.seq_len} "
        f"in {elapsed:.1f} s, {loader.epoch + 1} epoch(s) of {loader.n_windows} windows)"
    )


if __name__ == "__main__":
    main()
