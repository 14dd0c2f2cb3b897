"""A benchmark record: the seeds of one attempt under a protocol, judged by its rule, in a folder.

    record/
      README.md        the protocol and its rule, the attempt's settings, a table per seed, the
                       mean, std and the rule's statistic at every late validated step, the first
                       step where the rule holds (the reported step), the verdict, wall time and
                       hardware, and the command that reproduces it
      <run>/           each seed's config.yaml, launches.jsonl (code version, packages, hardware),
                       code.diff (and its sha256 in the README), metrics.jsonl, console.log

The rule is the optimization track's: (target − mean)·√n ≥ 0.004 over n non-cherry-picked seeds,
evaluated at every step all seeds validated; there is no early stopping inside a run. A record
never overwrites another: a taken folder name gets .2, .3, ...
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval import stats
from eval.runs import Run
from train.config import protocol_changes
from train.rundir import describe_hardware, read_launches

RUN_FILES = ("config.yaml", "launches.jsonl", "code.diff", "metrics.jsonl", "console.log")


def validated_means(runs: Sequence[Run]) -> list[tuple[int, list[float]]]:
    """[(step, the seeds' val losses)] at every step that every run validated, in order."""
    series = [dict(run.series("val_loss")) for run in runs]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    return [(step, [s[step] for s in series]) for step in common]


def first_passing_step(runs: Sequence[Run], target: float) -> tuple[int, list[float]] | None:
    """The first validated step at which the seeds' mean passes the track's rule, and their losses."""
    return next(((step, losses) for step, losses in validated_means(runs) if stats.track_passes(losses, target)), None)


def free_name(path: Path) -> Path:
    for number in range(1, 10_000):
        candidate = path if number == 1 else path.with_name(f"{path.name}.{number}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"{path} and 9,999 numbered copies exist; clear some out")


def _hardware(run: Run) -> str:
    launches = read_launches(run.path / "launches.jsonl")
    if not launches:
        return "-"
    last = launches[-1]
    return f"{describe_hardware(last['hardware'])}, world size {last.get('world_size')}, torch {last.get('torch')}"


def _code_version(run: Run) -> str:
    launches = read_launches(run.path / "launches.jsonl")
    commit = launches[-1].get("git_commit") if launches else None
    diff = run.path / "code.diff"
    diff_hash = hashlib.sha256(diff.read_bytes()).hexdigest()[:16] if diff.is_file() else None
    return f"{(commit or 'unknown')[:12]}" + (f" + uncommitted diff sha256 {diff_hash}… (code.diff)" if diff_hash else " (clean)")


def record_readme(runs: Sequence[Run], command: str) -> tuple[str, dict[str, Any]]:
    """The README text and the verdict's numbers for the seeds of one attempt."""
    cfg = runs[0].config
    protocol, target = cfg["protocol"], cfg["protocol"]["target"]
    changed = protocol_changes(cfg)
    complete = [run for run in runs if run.final_val_loss is not None]
    finals = [run.final_val_loss for run in complete]
    passing = first_passing_step(complete, target) if complete else None
    verdict = {
        "protocol": protocol["name"],
        "official": not changed,
        "seeds": len(complete),
        "steps": cfg["train"]["steps"],
        "final_mean": statistics.fmean(finals) if finals else None,
        "final_std": stats.sample_std(finals) if finals else None,
        "reported_step": passing[0] if passing else None,
        "reported_mean": statistics.fmean(passing[1]) if passing else None,
        "passes": passing is not None,
    }
    lines = [
        f"# {protocol['name']} record: {cfg['optim']['name']}, {cfg['train']['steps']} steps, {len(complete)} seeds",
        "",
        f"**Verdict: {'PASS' if passing else 'FAIL'}**"
        + (f" at step {passing[0]}: mean val loss {verdict['reported_mean']:.5f} over {len(complete)} seeds, "
           f"(target − mean)·√n = {stats.track_pass_statistic(passing[1], target):.5f} ≥ {stats.TRACK_MARGIN}"
           if passing else f": no validated step with (target − mean)·√n ≥ {stats.TRACK_MARGIN}"),
        "",
        "**Official**" if not changed else "**UNOFFICIAL** (protocol.unofficial=true): it changed "
        + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()),
        "",
        "## Rule",
        "",
        f"Target val loss {target}. Over n non-cherry-picked seeds the mean must satisfy (target − mean)·√n ≥ "
        f"{stats.TRACK_MARGIN} (modded-nanoGPT optimization track: a one-sided z-test with σ = 0.0013 at p < 0.001). "
        "It is evaluated at every step all seeds validated; the reported step is the first that passes. No run "
        "stops early on its val loss.",
        "",
        "## Settings",
        "",
        f"- optimizer: {cfg['optim']['name']}" + (f" ({cfg['optim']['source']})" if cfg["optim"].get("source") else ""),
        f"- matrix group: {', '.join(f'{k}={v}' for k, v in cfg['optim']['matrix'].items())}",
        f"- schedule: {cfg['train']['steps']} steps, warmup {cfg['train']['warmup_frac']}, linear decay over the last "
        f"{cfg['train']['decay_frac']}",
        f"- model {cfg['model']['name']}, data {cfg['data']['name']} ({cfg['data']['tokenizer']}), "
        f"{cfg['train']['batch_tokens']:,} tokens per step, val on {cfg['data']['val_tokens']:,} tokens",
        f"- reproduce: `{command}`",
        "",
        "## Seeds",
        "",
        "| seed | final val loss | val loss at the reported step | wall time (s) | code | hardware | run |",
        "|---:|---:|---:|---:|---|---|---|",
    ]
    for run in runs:
        at_report = dict(run.series("val_loss")).get(passing[0]) if passing else None
        final = "-" if run.final_val_loss is None else f"{run.final_val_loss:.5f}"
        lines.append(
            f"| {run.seed} | {final} | {'-' if at_report is None else f'{at_report:.5f}'} | "
            f"{run.records[-1]['elapsed_s']:.0f} | {_code_version(run)} | {_hardware(run)} | [{run.path.name}]({run.path.name}/) |"
            if run.records else f"| {run.seed} | - | - | - | - | - | {run.path.name}: {'; '.join(run.problems)} |"
        )
    if finals:
        mean, half = stats.mean_ci(finals)
        lines += [
            "",
            f"Final val loss over {len(finals)} seeds: mean {mean:.5f}, std {verdict['final_std']:.5f}"
            + (f", 95% CI ± {half:.5f}" if half is not None else "")
            + (f"; one-sided t-test against {target} (the main track's rule, p < 0.01): "
               f"p = {stats.one_sided_t_test(finals, target)[1]:.3g}" if len(finals) > 1 and verdict["final_std"] > 0 else ""),
        ]
    late = [(step, losses) for step, losses in validated_means(complete)][-12:]
    if late:
        lines += ["", "## The rule at the last validated steps", "", "| step | mean | (target − mean)·√n | passes |", "|---:|---:|---:|---|"]
        lines += [
            f"| {step} | {statistics.fmean(losses):.5f} | {stats.track_pass_statistic(losses, target):+.5f} | "
            f"{'yes' if stats.track_passes(losses, target) else 'no'} |"
            for step, losses in late
        ]
    missing = [run for run in runs if run.problems]
    if missing:
        lines += ["", "## Runs with missing or partial metrics", ""] + [f"- {run.path}: {'; '.join(run.problems)}" for run in missing]
    return "\n".join(lines) + "\n", verdict


def write_record(runs: Sequence[Run], record_dir: Path, command: str) -> tuple[Path, dict[str, Any]]:
    """Write the record folder (a free name at or after `record_dir`); returns it and the verdict."""
    if not runs or not all(run.config.get("protocol", {}).get("name") for run in runs):
        raise ValueError("a record needs runs of a protocol recipe (experiment=speedrun_track3 or speedrun_tiny)")
    text, verdict = record_readme(runs, command)
    record_dir = free_name(record_dir)
    staging = record_dir.with_name(f".{record_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "README.md").write_text(text)
    for run in runs:
        target = staging / run.path.name
        target.mkdir()
        for name in RUN_FILES:
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, target / name)
    staging.rename(record_dir)
    return record_dir, verdict
