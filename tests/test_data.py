"""Shards, loaders, corpus preparation and data configs, on small local data (offline)."""

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from train import corpus, prepare
from train.cli import exit_code
from train.data import TokenLoader, resolve_shards, validation_batches
from train.shards import HEADER_BYTES, DataError, load_shard, read_shard_header, write_shard
from train.tokenizer import EOT_TOKEN, get_tokenizer

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
SHARD_SIZES = (1000, 1500, 700)


@pytest.fixture
def shards(tmp_path):
    """Three shards; shard k holds k*10000, k*10000+1, ... so a row shows where it came from."""
    return [
        write_shard(tmp_path / f"t_train_{k + 1:06d}.bin", np.arange(n) + k * 10000) for k, n in enumerate(SHARD_SIZES)
    ]


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def first_tokens(batches):
    return [int(t) for inputs, _ in batches for t in inputs[:, 0]]


# --- shard format ------------------------------------------------------------


def test_shard_round_trip_is_llm_c_format(tmp_path):
    tokens = np.array([EOT_TOKEN, 15496, 995, 0, 65535])
    path = write_shard(tmp_path / "x_val_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * len(tokens)
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, len(tokens)] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard_header(path) == len(tokens)
    assert load_shard(path).tolist() == tokens.tolist()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def set_header_int(path, index, value):
    raw = bytearray(path.read_bytes())
    raw[4 * index : 4 * index + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda p: p.unlink(), "file not found"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "shorter than the 1024-byte header"),
        (lambda p: set_header_int(p, 0, 12345), "bad magic number 12345"),
        (lambda p: set_header_int(p, 1, 7), "unsupported version 7"),
        (lambda p: p.write_bytes(p.read_bytes()[:-6]), "truncated"),
        (lambda p: set_header_int(p, 2, 99), "token count mismatch, the header says 99 tokens"),
        (lambda p: set_header_int(p, 2, 0) or p.write_bytes(p.read_bytes()[:HEADER_BYTES]), "holds no tokens"),
    ],
)
def test_bad_shard_is_one_clear_error(tmp_path, corrupt, expected):
    path = write_shard(tmp_path / "bad.bin", np.arange(100))
    corrupt(path)
    with pytest.raises(DataError, match=expected) as err:
        load_shard(path)
    assert str(path) in str(err.value)


def test_write_shard_rejects_tokens_outside_uint16(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        write_shard(tmp_path / "x.bin", [1, 70000])


def test_a_shard_is_complete_and_fsynced_before_it_takes_its_name(tmp_path, monkeypatch):
    path = tmp_path / "x_train_000001.bin"
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    def replace(staged, target):
        assert not path.exists(), "the shard's name appeared before its rename"
        assert read_shard_header(staged) == 100 and os.stat(staged).st_ino in synced
        renamed.append(Path(target))
        real_replace(staged, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_shard(path, np.arange(100))
    assert renamed == [path] and synced[-1] == tmp_path.stat().st_ino  # the directory last: the rename is durable
    assert load_shard(path).tolist() == list(range(100))


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_shard_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch, failing):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError, match="x_train_000001.bin"):
        write_shard(tmp_path / "x_train_000001.bin", np.arange(100))
    assert list(tmp_path.iterdir()) == []


# --- training loader ---------------------------------------------------------


def test_batches_are_shifted_windows_inside_one_shard(shards):
    inputs, targets = TokenLoader(shards, micro_batch=4, seq_len=15).next_batch()
    assert inputs.shape == targets.shape == (4, 15) and inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    rows = torch.cat([inputs, targets[:, -1:]], dim=1)
    assert torch.all(rows.diff(dim=1) == 1)  # consecutive tokens: no shard boundary crossed
    assert torch.all(rows[:, 0] % 10000 % 16 == 0)  # aligned windows of seq_len + 1


def test_one_epoch_visits_every_window_once(shards):
    loader = TokenLoader(shards, micro_batch=5, seq_len=15)
    n_windows = sum(n // 16 for n in SHARD_SIZES)
    seen = first_tokens(take(loader, n_windows // 5))
    assert len(set(seen)) == len(seen) == n_windows - n_windows % 5
    assert loader.epoch == 0
    loader.next_batch()
    assert loader.epoch == 1


def test_same_seed_same_order_other_seed_other_order(shards):
    def run(seed):
        return first_tokens(take(TokenLoader(shards, 4, 15, seed=seed), 60))  # ~2 epochs

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_ranks_are_disjoint_and_cover_the_single_process_batch(shards):
    single = TokenLoader(shards, micro_batch=6, seq_len=15, seed=3)
    ranks = [TokenLoader(shards, micro_batch=3, seq_len=15, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for _ in range(40):  # crosses an epoch boundary
        whole, _ = single.next_batch()
        parts = [loader.next_batch()[0] for loader in ranks]
        assert not set(parts[0][:, 0].tolist()) & set(parts[1][:, 0].tolist())
        assert torch.equal(torch.cat(parts), whole)


def test_resume_continues_exactly(shards):
    reference = TokenLoader(shards, micro_batch=4, seq_len=15, seed=5)
    take(reference, 30)
    state = json.loads(json.dumps(reference.state_dict()))
    expected = take(reference, 30)  # crosses into the next epoch
    resumed = TokenLoader(shards, micro_batch=4, seq_len=15, seed=5)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, take(resumed, 30)):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_refuses_a_different_stream(shards):
    state = TokenLoader(shards, micro_batch=4, seq_len=15).state_dict()
    with pytest.raises(DataError, match="seq_len=15"):
        TokenLoader(shards, micro_batch=4, seq_len=31).load_state_dict(state)


def test_sequence_longer_than_the_data(shards):
    with pytest.raises(DataError, match="seq_len 2000 is too long for the data"):
        TokenLoader(shards, micro_batch=1, seq_len=2000)
    with pytest.raises(DataError, match="world_size\\*micro_batch = 400"):
        TokenLoader(shards, micro_batch=100, seq_len=15, world_size=4)


# --- validation batches ------------------------------------------------------


def test_validation_reads_the_stream_head_split_across_ranks(tmp_path):
    val = [
        write_shard(tmp_path / "v_val_000000.bin", np.arange(50)),
        write_shard(tmp_path / "v_val_000001.bin", np.arange(50, 300)),
    ]
    single = list(validation_batches(val, micro_batch=2, seq_len=8, tokens=70))  # rounded down to 64
    assert len(single) == 4
    stream = torch.cat([x.flatten() for x, _ in single])
    assert torch.equal(stream, torch.arange(64))
    assert all(torch.equal(x + 1, y) for x, y in single)
    per_rank = [list(validation_batches(val, 2, 8, 70, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [2, 2]
    interleaved = [per_rank[r][k][0] for k in range(2) for r in (0, 1)]
    assert torch.equal(torch.cat(interleaved).flatten(), stream)


def test_validation_too_short_or_budget_too_small(tmp_path):
    val = [write_shard(tmp_path / "v_val_000000.bin", np.arange(64))]  # needs 64 + 1 for the targets
    with pytest.raises(DataError, match="validation data too short"):
        list(validation_batches(val, 2, 8, 64))
    with pytest.raises(DataError, match="smaller than one global batch"):
        list(validation_batches(val, 2, 8, 20, world_size=2))


# --- preparing shards --------------------------------------------------------


def decode_documents(paths):
    tokens = np.concatenate([load_shard(p) for p in sorted(paths, key=lambda p: p.name.split("_")[-1])])
    assert tokens[0] == EOT_TOKEN
    return get_tokenizer().decode(tokens.tolist()).split("<|endoftext|>")[1:]


def test_prepare_local_text_files(tmp_path):
    texts = ["Whether 'tis nobler in the mind to suffer. " * 40, "The slings and arrows. " * 60]
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for f, text in zip(files, texts):
        f.write_text(text)
    shards = corpus.prepare_local(files, tmp_path / "out", shard_tokens=200, val_tokens=100)
    names = [p.name for p in shards]
    assert names[-1] == "local_val_000000.bin" and names[0] == "local_train_000001.bin"
    assert read_shard_header(shards[-1]) == 100 and read_shard_header(shards[0]) == 200
    assert decode_documents(shards) == texts  # each file one document, <|endoftext|> before it


def test_prepare_local_jsonl_through_the_cli(tmp_path, capsys):
    docs = [f"document {i}: " + "words " * i for i in range(1, 30)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    out = tmp_path / "out"
    argv = ["local", str(src), "--out", str(out), "--name", "mine", "--val-tokens", "50"]
    assert exit_code(lambda: prepare.main(argv + ["--shard-tokens", "1_000"])) == 2
    assert "no field 'text'" in capsys.readouterr().err
    assert prepare.main(argv + ["--text-field", "body", "--shard-tokens", "1_000"]) == 0
    assert decode_documents(out.glob("mine_*.bin")) == docs
    assert exit_code(lambda: prepare.main(argv + ["--text-field", "body"])) == 2  # never writes into existing output
    assert "already exists" in capsys.readouterr().err


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty corpus"):
        corpus.prepare_local([tmp_path / "empty.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="empty corpus"):
        corpus.write_token_shards(iter([]), tmp_path, "x", "nothing")


def test_corpus_smaller_than_the_val_split(tmp_path):
    docs = corpus.tokenize_documents([["a short text"]])
    with pytest.raises(DataError, match="corpus too small"):
        corpus.write_token_shards(docs, tmp_path, "x", "one text", val_tokens=1000)


def test_fineweb_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no real network call
    started = time.monotonic()
    with pytest.raises(DataError, match="FineWeb10B needs the Hugging Face Hub, but http://127.0.0.1:9 is unreachable"):
        corpus.prepare_fineweb10b(tmp_path / "fw", train_shards=1)
    assert time.monotonic() - started < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set"):
        corpus.prepare_fineweb10b(tmp_path / "fw", from_raw=True)
    assert not (tmp_path / "fw").exists()


# --- the built-in corpus and data configs ------------------------------------


@pytest.fixture
def small_builtin(monkeypatch):
    """Stand in small local texts for the Shakespeare download; count the builds."""
    builds = []

    def documents():
        builds.append(1)
        time.sleep(0.2)  # widen the window in which concurrent callers could collide
        return [f"Act {i}. " + "Enter a player. " * 2500 for i in range(10)]  # ~100k tokens

    monkeypatch.setattr(corpus, "shakespeare_documents", documents)
    return builds


def test_builtin_corpus_is_built_once_even_concurrently(tmp_path, small_builtin):
    data_dir = tmp_path / "data" / "shakespeare"
    callers = [threading.Thread(target=corpus.ensure_builtin_corpus, args=(data_dir,)) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert corpus.ensure_builtin_corpus(data_dir) == data_dir
    assert len(small_builtin) == 1
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "manifest.json",
        "shakespeare_train_000001.bin",
        "shakespeare_val_000000.bin",
    ]
    assert read_shard_header(data_dir / "shakespeare_val_000000.bin") == corpus.DEFAULT_VAL_TOKENS["gpt2"]
    assert [p.name for p in data_dir.parent.iterdir() if p.name.endswith((".tmp", ".old"))] == []


@pytest.mark.parametrize("name", ["shakespeare", "shakespeare_bytes", "local", "fineweb10b"])
def test_data_configs_have_the_schema(name, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_DATA", "/somewhere")
    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    assert set(cfg) == {"name", "tokenizer", "dir", "train_pattern", "val_pattern", "val_tokens", "verify_checksums"}
    assert cfg.dir == f"/somewhere/{name}"
    assert cfg.tokenizer == ("bytes" if name.endswith("bytes") else "gpt2")


def test_byte_shards_are_written_and_read_back(tmp_path, small_builtin):
    data_dir = corpus.ensure_builtin_corpus(tmp_path / "bytes", "bytes")
    val = load_shard(data_dir / "shakespeare_val_000000.bin")
    assert len(val) == corpus.DEFAULT_VAL_TOKENS["bytes"] and val[0] == 256  # <|endoftext|> opens the stream
    assert get_tokenizer("bytes").decode(val[1:40].tolist()) == "Act 0. Enter a player. Enter a player. "
    assert json.loads((data_dir / "manifest.json").read_text())["tokenizer"] == "bytes"


def test_shards_of_another_tokenizer_are_refused_naming_both(tmp_path, small_builtin, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_DATA", str(tmp_path))
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DATA / "shakespeare_bytes.yaml"), resolve=True)
    corpus.ensure_builtin_corpus(tmp_path / "shakespeare", "gpt2")
    with pytest.raises(DataError, match="made with tokenizer 'gpt2', but data.tokenizer is 'bytes'"):
        resolve_shards({**cfg, "dir": str(tmp_path / "shakespeare")})


def test_a_damaged_shard_is_caught_at_launch_by_its_checksum(tmp_path, small_builtin, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_DATA", str(tmp_path))
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DATA / "shakespeare.yaml"), resolve=True)
    resolve_shards(cfg)
    val = tmp_path / "shakespeare" / "shakespeare_val_000000.bin"
    raw = bytearray(val.read_bytes())
    raw[2000:2004] = b"\x01\x00\x01\x00"  # in-vocabulary ids: only the checksum sees it
    val.write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match=r"shakespeare_val_000000.bin is damaged.*rebuild: python -m train.prepare shakespeare"
    ):
        resolve_shards(cfg)
    assert resolve_shards({**cfg, "verify_checksums": False})  # the check can be switched off


def test_the_prepare_command_repairs_the_builtin_corpus(tmp_path, small_builtin, capsys):
    out = tmp_path / "shakespeare"
    assert exit_code(lambda: prepare.main(["shakespeare", "--out", str(out)])) == 0
    (out / "shakespeare_val_000000.bin").unlink()  # the user deleted a damaged shard
    assert exit_code(lambda: prepare.main(["shakespeare", "--out", str(out)])) == 0
    assert f"rebuilding the built-in corpus in {out}: no val shard" in capsys.readouterr().err
    assert (out / "shakespeare_val_000000.bin").is_file() and len(small_builtin) == 2
    raw = bytearray((out / "shakespeare_train_000001.bin").read_bytes())
    raw[-2:] = b"\x00\x00"
    (out / "shakespeare_train_000001.bin").write_bytes(bytes(raw))
    assert exit_code(lambda: prepare.main(["shakespeare", "--out", str(out)])) == 0
    assert len(small_builtin) == 3 and resolve_shards(
        {
            "name": "shakespeare",
            "tokenizer": "gpt2",
            "dir": str(out),
            "train_pattern": "shakespeare_train_*.bin",
            "val_pattern": "shakespeare_val_*.bin",
            "verify_checksums": True,
        }
    )


def test_a_damaged_val_shard_stops_a_run_before_its_run_directory_is_made(micro_config, micro_shards, tmp_path):
    from train.loop import train

    bad = tmp_path / "bad"
    shutil.copytree(micro_shards, bad)
    val = bad / "micro_val_000000.bin"
    val.write_bytes(val.read_bytes()[:-10])
    with pytest.raises(DataError, match="micro_val_000000.bin: truncated"):
        train(micro_config(f"data.dir={bad}", out="run"))
    assert not (tmp_path / "run").exists()


def test_resolve_shards_prepares_the_builtin_corpus(tmp_path, small_builtin, monkeypatch):
    monkeypatch.setenv("AURORA_BENCH_DATA", str(tmp_path))
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DATA / "shakespeare.yaml"), resolve=True)
    train, val = resolve_shards(cfg)
    assert [p.name for p in train] == ["shakespeare_train_000001.bin"]
    assert [p.name for p in val] == ["shakespeare_val_000000.bin"]
    assert resolve_shards(cfg) == (train, val) and len(small_builtin) == 1


@pytest.mark.parametrize(
    "name, command", [("local", "python -m train.prepare local"), ("fineweb10b", "python -m train.prepare fineweb10b")]
)
def test_resolve_shards_names_what_is_missing(tmp_path, monkeypatch, name, command):
    monkeypatch.setenv("AURORA_BENCH_DATA", str(tmp_path))
    cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    with pytest.raises(DataError, match="no shards match data.train_pattern=") as err:
        resolve_shards(cfg)
    assert command in str(err.value) and str(tmp_path / name) in str(err.value)
