"""HellaSwag evaluation throughput, in examples/s, for a model preset with random weights.

    python scripts/bench_hellaswag.py [--model tiny] [--examples 200] [--batch-size 32]
                                      [--device auto] [--precision auto] [--data FILE]

Times evaluate_hellaswag, the whole `python -m eval.hellaswag` route less the
checkpoint load: lm-eval's hellaswag task on the local validation file (both
scores: lm-eval's through lm-eval, then the llm.c style), on --examples evenly
spaced rows. A warm-up on 8 rows keeps imports and dataset caching out of the
timing. Data: --data FILE, else the registry copy (prepared on first use).
The GPU target is `--model gpt124m --examples 10042 --device cuda`: under 60 s.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import torch  # noqa: E402

from eval.adapter import AuroraLM  # noqa: E402
from eval.hellaswag import DataSource, evaluate_hellaswag, prepare_validation, read_examples  # noqa: E402
from model import build_model  # noqa: E402
from train.config import model_preset  # noqa: E402
from train.dist import pick_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="a preset in conf/model/ (default: tiny)")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data", type=Path, help="a HellaSwag jsonl file (default: the registry copy)")
    args = parser.parse_args()

    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    source = DataSource("local", args.data.resolve()) if args.data else DataSource("registry", prepare_validation())
    read_examples(source.path)
    model_cfg = model_preset(args.model)
    torch.manual_seed(0)
    model = build_model(model_cfg).to(pick_device(args.device, 0)).eval()
    lm = AuroraLM(model=model, max_length=args.max_length, batch_size=args.batch_size, precision=args.precision)

    evaluate_hellaswag(lm, source, limit=8)  # warm-up
    started = time.perf_counter()
    result = evaluate_hellaswag(lm, source, limit=args.examples)
    elapsed = time.perf_counter() - started
    print(
        f"hellaswag: {result['n'] / elapsed:.1f} examples/s "
        f"({result['n']} examples, both scores, in {elapsed:.1f} s) | "
        f"model {args.model} ({model.num_parameters():,} parameters, random weights) | batch {args.batch_size} | "
        f"{lm.device} {lm.precision} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
