"""A benchmark record: the seeds of one attempt under a protocol, judged by its rule, in a folder.

    record/
      README.md        the verdict first (PASS at the reported step, FAIL or INCOMPLETE, and how many
                       of the launched seeds finished), the protocol and its rule, the attempt's
                       settings, a table per seed with its outcome, the rule and the t-test at the
                       reported step and again at the end of the run, the rule at every late
                       validated step, wall time and hardware, and the command that reproduces it
      <run>/           each seed's config.yaml, launches.jsonl (code version, packages, hardware),
                       code.diff (and its sha256 in the README), metrics.jsonl, console.log

The rule is the optimization track's: (target − mean)·√n ≥ 0.004 over n non-cherry-picked seeds,
evaluated at every step all seeds validated; there is no early stopping inside a run. Every
launched seed counts (eval/runs.py gives each its outcome): a seed that has not finished makes
the verdict INCOMPLETE; a failed one (diverged, or a non-finite loss) counts as a loss above the
target, so the verdict is FAIL, naming it. A record never overwrites another: a taken folder name
gets .2, .3, ...

An attempt's runs come from `attempt_points` (scripts/speedrun.py runs them); `verdict_line` says
the verdict in one line.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval import stats
from eval.report import PROBLEMS_HEADING, UNDEFINED
from eval.runs import FAILED, FINISHED, UNFINISHED, Run, not_finished, with_outcome
from train.config import chosen_options, compose_sweep, protocol_changes
from train.metric_names import ELAPSED_S, VAL_LOSS
from train.rundir import describe_hardware, read_launches
from train.sweep import Point

DEFAULT_RECIPE = "experiment=speedrun_track3"
RUN_FILES = ("config.yaml", "launches.jsonl", "code.diff", "metrics.jsonl", "console.log")


def validated_means(runs: Sequence[Run]) -> list[tuple[int, list[float]]]:
    """[(step, the seeds' val losses)] at every step that every run validated, in order."""
    series = [dict(run.series(VAL_LOSS)) for run in runs]
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
    return f"{(commit or 'unknown')[:12]}" + (
        f" + uncommitted diff sha256 {diff_hash}… (code.diff)" if diff_hash else " (clean)"
    )


def _t_test(losses: Sequence[float], target: float) -> str:
    """The main track's test as text: "t = …, p = …", or why it was not run."""
    try:
        t, p = stats.one_sided_t_test(losses, target)
    except ValueError as reason:
        return f"not run: {reason}"
    return f"t = {t:.3f}, p = {p:.3g}"


def _named(runs: Sequence[Run]) -> str:
    return ", ".join(run.name for run in runs)


def judge(runs: Sequence[Run], target: float) -> dict[str, Any]:
    """The verdict on every launched seed: INCOMPLETE while one has not finished, FAIL when one
    failed or the rule holds at no validated step, else PASS at the first step where it holds.
    "reason" follows the status word in a sentence ("PASS at step …", "FAIL: …")."""
    finished, failed, unfinished = (with_outcome(runs, outcome) for outcome in (FINISHED, FAILED, UNFINISHED))
    passing = first_passing_step(runs, target) if len(finished) == len(runs) else None
    if unfinished:
        status, reason = (
            "INCOMPLETE",
            (
                f": {_named(unfinished)} {'has' if len(unfinished) == 1 else 'have'} not finished; no verdict until "
                "every launched seed has (rerun the command to resume)"
                + (f"; {_named(failed)} failed" if failed else "")
            ),
        )
    elif failed:
        status, reason = "FAIL", f": {_named(failed)} failed, and a failed run counts as a loss above the target"
    elif passing is None:
        status, reason = (
            "FAIL",
            (f": no validated step with (target − mean)·√n ≥ {stats.TRACK_MARGIN} over {len(runs)} seeds"),
        )
    else:
        step, losses = passing
        status, reason = (
            "PASS",
            (
                f" at step {step}: mean val loss {stats.mean(losses):.5f} over {len(runs)} seeds, "
                f"(target − mean)·√n = {stats.track_pass_statistic(losses, target):+.5f} ≥ {stats.TRACK_MARGIN}; "
                f"one-sided t-test at step {step}: {_t_test(losses, target)}"
            ),
        )
    return {
        "status": status,
        "reason": reason,
        "launched": len(runs),
        "finished": len(finished),
        "reported_step": passing[0] if passing else None,
        "reported_losses": passing[1] if passing else None,
    }


def record_readme(runs: Sequence[Run], command: str) -> tuple[str, dict[str, Any]]:
    """The README text and the verdict (judge's, with the protocol and whether it is official)."""
    cfg = next(run.config for run in runs if run.config)
    protocol, target = cfg["protocol"], cfg["protocol"]["target"]
    changed = protocol_changes(cfg)
    verdict = {
        **judge(runs, target),
        "protocol": protocol["name"],
        "official": not changed,
        "steps": cfg["train"]["steps"],
    }
    finished = with_outcome(runs, FINISHED)
    everyone = len(finished) == len(runs)
    seeds = f"{len(runs)} seeds" + ("" if everyone else f" launched, {len(finished)} finished ({not_finished(runs)})")
    subset = "" if everyone else f" (over the {len(finished)} finished seeds of {len(runs)}: not a verdict)"
    reported = verdict["reported_step"]
    lines = [
        f"# {protocol['name']} record: {cfg['optim']['name']}, {cfg['train']['steps']} steps, {seeds}",
        "",
        f"**Verdict: {verdict['status']}**{verdict['reason']}",
        "",
        "**Official**"
        if not changed
        else "**UNOFFICIAL** (protocol.unofficial=true): it changed "
        + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()),
        "",
        "## Rule",
        "",
        f"Target val loss {target}. Over n non-cherry-picked seeds the mean must satisfy (target − mean)·√n ≥ "
        f"{stats.TRACK_MARGIN} (modded-nanoGPT optimization track: a one-sided z-test with σ = "
        f"{stats.TRACK_SEED_SIGMA} at p < 0.001; a statistic within {stats.RULE_TOLERANCE:g} of the margin is on it, "
        "and passes). It is evaluated at every step all seeds validated; the reported step is the first that passes, "
        "and the verdict's numbers, the main track's one-sided t-test included, are those at that step; the end of the "
        "run is reported beside them. No run stops early on its val loss. Every launched seed counts: a failed one "
        "(diverged, or a non-finite loss) as a loss above the target, and one that has not finished leaves the verdict "
        "INCOMPLETE.",
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
        "| seed | outcome | final val loss | val loss at the reported step | wall time (s) | code | hardware | run |",
        "|---:|---|---:|---:|---:|---|---|---|",
    ]
    for run in runs:
        outcome = "; ".join(run.problems) or run.outcome
        at_report = dict(run.series(VAL_LOSS)).get(reported)
        final = "-" if run.final_val_loss is None else f"{run.final_val_loss:.5f}"
        lines.append(
            f"| {run.seed} | {outcome} | {final} | {'-' if at_report is None else f'{at_report:.5f}'} | "
            f"{run.records[-1][ELAPSED_S]:.0f} | {_code_version(run)} | {_hardware(run)} | "
            f"[{run.path.name}]({run.path.name}/) |"
            if run.records
            else f"| {run.seed} | {outcome} | - | - | - | - | - | {run.path.name} |"
        )
    if reported is not None:
        lines += [
            "",
            f"## At the reported step, {reported} (the verdict)",
            "",
            _summary(verdict["reported_losses"], target),
        ]
    if finished:
        finals = [run.final_val_loss for run in finished]
        lines += ["", f"## At the end of the run, step {cfg['train']['steps']}{subset}", "", _summary(finals, target)]
    late = validated_means(finished)[-12:]
    if late:
        lines += [
            "",
            f"## The rule at the last validated steps{subset}",
            "",
            "| step | mean | (target − mean)·√n | passes |",
            "|---:|---:|---:|---|",
        ]
        lines += [
            f"| {step} | {stats.mean(losses):.5f} | {stats.track_pass_statistic(losses, target):+.5f} | "
            f"{'yes' if stats.track_passes(losses, target) else 'no'} |"
            for step, losses in late
        ]
    problem_runs = [run for run in runs if run.problems]
    if problem_runs:
        lines += ["", f"## {PROBLEMS_HEADING}", ""]
        lines += [f"- {run.path}: {'; '.join(run.problems)}" for run in problem_runs]
    return "\n".join(lines) + "\n", verdict


def _summary(losses: Sequence[float], target: float) -> str:
    """Mean, std, 95% CI, the track's statistic and the main track's t-test of one set of seed losses."""
    mean, half = stats.mean_ci(losses)
    std = stats.sample_std(losses)
    return (
        f"Val loss over {len(losses)} seed{'s' if len(losses) > 1 else ''}: mean {mean:.5f}, "
        f"std {UNDEFINED if std is None else f'{std:.5f}'}, 95% CI ± {UNDEFINED if half is None else f'{half:.5f}'}; "
        f"(target − mean)·√n = {stats.track_pass_statistic(losses, target):+.5f} "
        f"({'passes' if stats.track_passes(losses, target) else 'fails'} the rule); one-sided t-test against {target} "
        f"(the main track's rule, p < 0.01): {_t_test(losses, target)}"
    )


def write_record(runs: Sequence[Run], record_dir: Path, command: str) -> tuple[Path, dict[str, Any]]:
    """Write the record folder (a free name at or after `record_dir`); returns it and the verdict."""
    started = [run for run in runs if run.config]
    if not started:
        raise ValueError(
            "no seed of this attempt has started (no config.yaml in its run directories): nothing to record"
        )
    if not all(run.config.get("protocol", {}).get("name") for run in started):
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


def attempt_points(overrides: list[str], seeds: list[int], nproc: int) -> list[Point]:
    """The attempt's runs, a seed each: DEFAULT_RECIPE unless the overrides name another
    experiment, which must be a protocol recipe."""
    recipe = [] if any(o.startswith("experiment=") for o in overrides) else [DEFAULT_RECIPE]
    seed = f"seed={','.join(map(str, seeds))}"
    points = [Point(point, cfg) for point, cfg in compose_sweep([*recipe, *overrides, seed], nproc)]
    if not points[0].config["protocol"]["name"]:
        raise ValueError(
            "scripts/speedrun.py runs a protocol recipe: experiment=speedrun_track3 or experiment=speedrun_tiny"
        )
    return points


def default_record_dir(point: Point) -> Path:
    """runs/records/<recipe>-<optim option>-<steps>, named by the option given (aurora_wide), as
    run directories are, not by optim.name (the class it builds: aurora)."""
    option = chosen_options(point.overrides)["optim"]
    return Path("runs/records") / f"{point.config['protocol']['name']}-{option}-{point.config['train']['steps']}"


def verdict_line(cfg: dict[str, Any], verdict: dict[str, Any], record_dir: Path) -> str:
    """The attempt, its verdict and the rule, and where the record is."""
    return (
        f"{cfg['protocol']['name']} ({'official' if verdict['official'] else 'UNOFFICIAL'}), {cfg['optim']['name']}, "
        f"{verdict['steps']} steps, {verdict['finished']} of {verdict['launched']} seeds finished: {verdict['status']}"
        f"{verdict['reason']}; target {cfg['protocol']['target']}, "
        f"rule (target - mean)*sqrt(n) >= {stats.TRACK_MARGIN}\n"
        f"record: {record_dir / 'README.md'}"
    )
