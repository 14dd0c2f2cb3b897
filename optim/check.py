"""python -m optim.check OPTIMIZER [OPTIMIZER ...]: the conformance checks every optimizer passes.

OPTIMIZER is an optim config's name (conf/optim/<name>.yaml, or in the folder --config-dir names)
or an import path of an optimizer class (a plug-in: optim/build.py). Each check runs on a small real
GPT on the CPU and prints one table row; the command exits 1 when any check fails, 2 on bad input.

    claims       every trainable parameter is in exactly one param group
    round trip   state_dict -> a fresh optimizer: the next steps are bitwise equal
    resume       a distributed checkpoint on disk (the format train/checkpoint.py writes), loaded into
                 a fresh model and optimizer, continues the loss curve bitwise
    2 ranks      2 gloo ranks with replicated parameters (as under DDP) equal one process
    FSDP2        the same with fully_shard parameters, or a clear refusal: a ValueError when it is
                 built on sharded parameters (a plug-in's class sets `supports_fsdp2 = False`)
    finite       the update is finite on all-zero gradients and on rows with zero gradient (dead units)
    seed         the same seed gives the same parameters
    lr schedule  the harness's schedule (LambdaLR on every group's lr) scales the step
    unknown      an option the optimizer does not take is refused

This command sits on top of the harness: it composes configs with train.config; nothing in optim
imports it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from model import GPT, GPTConfig

from .build import build_optimizer, import_optimizer_class
from .distributed import run_on_gloo_ranks, whole
from .groups import GROUP_NAMES
from .matrix import MATRIX, MatrixOptimizer

# A GPT small enough to check in seconds, with every kind of parameter the groups name; an odd
# layer count so that 2 ranks own unequal shares of the matrices.
CHECK_MODEL = GPTConfig(vocab_size=64, n_layer=3, n_head=2, head_dim=8, d_model=16, mlp_expansion=4.0)
BATCH, SEQ_LEN, STEPS = 4, 16, 4
WORLD_SIZE = 2
RANK_TOLERANCE = 1e-6  # fp32 rounding: an all-gather may reorder nothing, but a foreign rule may
TIMEOUT_S = 300


@dataclass
class Outcome:
    passed: bool
    detail: str


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CHECK_MODEL)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(
        0, CHECK_MODEL.vocab_size, (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(step)
    )
    return tokens[:, :-1], tokens[:, 1:]


def train_steps(model: GPT, optimizer, steps: range, scheduler=None) -> list[float]:
    """Real forward/backward steps on fixed batches; the losses."""
    losses = []
    for step in steps:
        loss = model(*batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: whole(param.detach()).clone() for name, param in model.named_parameters()}


def equal(a: dict, b: dict) -> str | None:
    """The first parameter that differs, or None."""
    return next((name for name in a if not torch.equal(a[name], b[name])), None)


# --- the checks: each takes the optim config and returns an Outcome --------------------------------


def check_claims(cfg: dict) -> Outcome:
    model = tiny_model()
    optimizer = build_optimizer(cfg, model)
    claimed = [param for group in optimizer.param_groups for param in group["params"]]
    trainable = [param for param in model.parameters() if param.requires_grad]
    twice = len(claimed) - len({id(p) for p in claimed})
    missing = len({id(p) for p in trainable} - {id(p) for p in claimed})
    detail = f"{len(trainable)} parameters in {len(optimizer.param_groups)} groups"
    return Outcome(
        twice == 0 and missing == 0, detail if not (twice or missing) else f"{missing} unclaimed, {twice} twice"
    )


def check_round_trip(cfg: dict) -> Outcome:
    reference = tiny_model()
    train_steps(reference, build_optimizer(cfg, reference), range(STEPS))
    first = tiny_model()
    optimizer = build_optimizer(cfg, first)
    train_steps(first, optimizer, range(STEPS // 2))
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = tiny_model(seed=1)
    resumed.load_state_dict(first.state_dict())
    resumed_optimizer = build_optimizer(cfg, resumed)
    resumed_optimizer.load_state_dict(saved)
    train_steps(resumed, resumed_optimizer, range(STEPS // 2, STEPS))
    differs = equal(parameters(reference), parameters(resumed))
    return Outcome(differs is None, "bitwise equal" if differs is None else f"{differs} differs after the reload")


def check_resume(cfg: dict) -> Outcome:
    full = tiny_model()
    curve = train_steps(full, build_optimizer(cfg, full), range(STEPS))
    first = tiny_model()
    optimizer = build_optimizer(cfg, first)
    head = train_steps(first, optimizer, range(STEPS // 2))
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process, as intended
        model_state, optim_state = get_state_dict(first, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=directory)
        del first, optimizer  # what a kill leaves: only the files
        resumed = tiny_model(seed=1)
        resumed_optimizer = build_optimizer(cfg, resumed)
        model_state, optim_state = get_state_dict(resumed, resumed_optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    tail = train_steps(resumed, resumed_optimizer, range(STEPS // 2, STEPS))
    resumed_curve = head + tail
    first = next((step for step, (a, b) in enumerate(zip(curve, resumed_curve)) if a != b), None)
    if first is None:
        return Outcome(True, "loss curve bitwise equal")
    return Outcome(
        False, f"step {first + 1}: loss {curve[first]:.6f} uninterrupted, {resumed_curve[first]:.6f} resumed"
    )


def check_finite(cfg: dict) -> Outcome:
    model = tiny_model()
    optimizer = build_optimizer(cfg, model)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    if not all(torch.isfinite(param).all() for param in model.parameters()):
        return Outcome(False, "not finite after a step on all-zero gradients")
    for step in range(2):
        model(*batch(step)).backward()
        for block in model.blocks:
            block.mlp.up.weight.grad[: block.mlp.up.weight.shape[0] // 4] = 0.0  # a quarter of the units dead
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    bad = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
    return Outcome(
        not bad, "finite on zero gradients and on dead rows" if not bad else f"{bad[0]} not finite with dead rows"
    )


def check_seed(cfg: dict) -> Outcome:
    runs = []
    for _ in range(2):
        model = tiny_model()
        train_steps(model, build_optimizer(cfg, model), range(STEPS))
        runs.append(parameters(model))
    differs = equal(*runs)
    return Outcome(differs is None, "bitwise equal" if differs is None else f"{differs} differs between two runs")


def check_lr_schedule(cfg: dict) -> Outcome:
    """Scale 0 leaves every parameter as it was; scale 1/2 moves it half as far on a first step."""
    moves = {}
    for scale in (0.0, 0.5, 1.0):
        model = tiny_model()
        optimizer = build_optimizer(cfg, model)
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step, scale=scale: scale)
        before = parameters(model)
        train_steps(model, optimizer, range(1))
        after = parameters(model)
        moves[scale] = torch.cat([(after[name] - before[name]).flatten() for name in before])
    if moves[0.0].abs().max() != 0:
        return Outcome(False, "parameters moved with the lr scaled to 0")
    ratio = (moves[0.5].norm() / moves[1.0].norm()).item()
    return Outcome(abs(ratio - 0.5) < 1e-3, f"step at lr x0.5 / step at lr x1 = {ratio:.4f} (0.5 expected)")


def check_unknown_option(cfg: dict) -> Outcome:
    misspelt = copy.deepcopy(cfg)
    misspelt["matrix"]["not_an_option_of_any_optimizer"] = 1
    try:
        build_optimizer(misspelt, tiny_model())
    except (ValueError, TypeError) as err:
        return Outcome(True, f"refused: {str(err).splitlines()[0]}")
    return Outcome(False, "optim.matrix.not_an_option_of_any_optimizer was accepted")


# --- 2 ranks ----------------------------------------------------------------------------------


def _shard_grads(model) -> None:
    for param in model.parameters():
        if isinstance(param, DTensor) and param.grad is not None and not isinstance(param.grad, DTensor):
            param.grad = distribute_tensor(param.grad, param.device_mesh, param.placements, src_data_rank=None)


def _ranks_run(cfg: dict, mesh) -> dict[str, torch.Tensor] | str:
    """Parameters after STEPS steps on the same batches on every rank (gradients averaged as DDP
    would: they are equal already), or the error the optimizer raised."""
    model = tiny_model()
    if mesh is not None:
        fully_shard(model, mesh=mesh)
    try:
        optimizer = build_optimizer(cfg, model)
    except ValueError as err:
        return f"refused: {str(err).splitlines()[0]}"
    for step in range(STEPS):
        model(*batch(step)).backward()
        _shard_grads(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return parameters(model)


def _rank_results(cfgs: list[dict]) -> list[dict]:
    """This rank's outcome of every config, replicated and FSDP2: [config][mode]."""
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    results = []
    for cfg in cfgs:
        outcome = {}
        for mode, run_mesh in (("replicated", None), ("fsdp2", mesh)):
            try:
                outcome[mode] = _ranks_run(cfg, run_mesh)
            except Exception as err:  # the check reports any failure of a foreign optimizer
                outcome[mode] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        results.append(outcome)
    return results


def two_rank_results(cfgs: list[dict]) -> list[list[dict]]:
    """Every config on 2 gloo ranks, replicated and FSDP2, in one spawn: [rank][config][mode]."""
    return run_on_gloo_ranks(_rank_results, (cfgs,), WORLD_SIZE, TIMEOUT_S)


def rank_outcome(single: dict, ranks: list, mode: str) -> Outcome:
    results = [rank[mode] for rank in ranks]
    failed = next((result for result in results if isinstance(result, str)), None)
    if failed is not None:
        if mode == "fsdp2" and failed.startswith("refused"):  # a ValueError when built on sharded parameters
            return Outcome(True, failed)
        return Outcome(
            False, failed + ("" if mode != "fsdp2" else "; set supports_fsdp2 = False on the class to refuse it")
        )
    worst = max((result[name] - single[name]).abs().max().item() for result in results for name in single)
    return Outcome(
        worst <= RANK_TOLERANCE, f"largest difference from 1 process {worst:.1e} (at most {RANK_TOLERANCE:.0e})"
    )


# --- the command -------------------------------------------------------------------------------

SINGLE_CHECKS: list[tuple[str, Callable[[dict], Outcome]]] = [
    ("claims", check_claims),
    ("round trip", check_round_trip),
    ("resume", check_resume),
    ("finite", check_finite),
    ("seed", check_seed),
    ("lr schedule", check_lr_schedule),
    ("unknown", check_unknown_option),
]


def optim_config(spec: str, config_dir: str | None = None) -> dict:
    """The optim config `spec` names: a config option (composed with its defaults; also one in the
    user's `config_dir`) or, for an import path, the class at its own defaults (a matrix rule: with
    the default AdamW groups)."""
    from train.config import compose_config, config_dirs, group_options, with_config_dir

    searchpath = with_config_dir([], config_dir) if config_dir else []
    if spec in group_options("optim", config_dirs(searchpath)):
        return compose_config([*searchpath, f"optim={spec}"])["optim"]
    sections = {section: {} for section in GROUP_NAMES}
    if issubclass(import_optimizer_class(spec), MatrixOptimizer):
        default = compose_config([])["optim"]
        sections.update({section: default[section] for section in GROUP_NAMES if section != MATRIX})
    return {"name": spec, "_target_": spec, **sections}


def run_checks(specs: list[str], config_dir: str | None = None) -> list[tuple[str, str, Outcome]]:
    cfgs = [optim_config(spec, config_dir) for spec in specs]
    for cfg in cfgs:
        build_optimizer(cfg, tiny_model())  # a config that cannot build stops here: bad input, not a failed check
    rows = []
    ranks = two_rank_results(cfgs)
    for spec, cfg, *rank_results in zip(specs, cfgs, *ranks):
        for name, check in SINGLE_CHECKS:
            try:
                rows.append((spec, name, check(cfg)))
            except Exception as err:  # a foreign optimizer may fail any way; that is the finding
                rows.append((spec, name, Outcome(False, f"{type(err).__name__}: {str(err).splitlines()[0]}")))
        model = tiny_model()
        single = _single_process(cfg, model)
        rows.append((spec, "2 ranks", rank_outcome(single, rank_results, "replicated")))
        rows.append((spec, "FSDP2", rank_outcome(single, rank_results, "fsdp2")))
    return rows


def _single_process(cfg: dict, model: GPT) -> dict[str, torch.Tensor]:
    train_steps(model, build_optimizer(cfg, model), range(STEPS))
    return parameters(model)


def table(rows: list[tuple[str, str, Outcome]]) -> str:
    width = max(len(spec) for spec, _, _ in rows)
    lines = [f"{'optimizer':<{width}}  {'check':<12} result  detail"]
    lines += [f"{spec:<{width}}  {name:<12} {'PASS' if o.passed else 'FAIL':<6}  {o.detail}" for spec, name, o in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optim.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("optimizers", nargs="+", help="optim config names (conf/optim) or import paths of classes")
    parser.add_argument("--config-dir", help="a folder of your own configs (as python -m train --config-dir)")
    args = parser.parse_args(argv)
    try:
        rows = run_checks(args.optimizers, args.config_dir)
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(rows))
    failed = [row for row in rows if not row[2].passed]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
