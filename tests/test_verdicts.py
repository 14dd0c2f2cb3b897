"""Records (scripts/speedrun.py --record-only) and comparison reports (eval/report.py,
scripts/report.py) over run directories made here with known losses: NaN, diverged, unfinished,
one seed, identical seeds, exactly on the threshold, a pair both ways round, a baseline whose loss
rises at the end, a crossing at the first validation. Each printed number is checked against
scipy or numpy, not only the words around it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from eval.report import PROBLEMS_HEADING, comparison_table, difference, findings, groups_of, pairwise, problems
from eval.runs import group_runs, load_runs
from tests.conftest import compose_config
from tests.test_scripts import load_script
from train.metric_names import (
    ACT_DEAD_FRAC,
    DEAD,
    MLP_HIDDEN,
    MLP_UP,
    STARVED_FRAC,
    STARVED_UP,
    block_module,
    diagnostic,
)

TARGET = 1.80  # speedrun_tiny's
STEPS = 250
BATCH = 2048
NAN = float("nan")
SPEEDUP = "speedup vs muon (tokens to its final loss)"
DIVERGED_LINE = "exit 3: error: the run diverged at step 120: train loss nan, grad norm nan; the update was not applied"


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    return compose_config("experiment=speedrun_tiny")


def write_run(
    path: Path,
    cfg: dict,
    optimizer: str,
    seed: int,
    curve: dict[int, float],
    train_loss: float = 2.0,
    optim_step_ms: float = 1.0,
    diagnostics: dict[int, dict[str, float]] | None = None,
):
    """A run directory as train/loop.py leaves it: config.yaml and a metrics.jsonl record at each
    validated step of `curve` ({step: val loss}), with `diagnostics[step]`'s keys where given; the
    last record's train loss is `train_loss`."""
    config = {**cfg, "seed": seed, "out_dir": str(path), "optim": {**cfg["optim"], "name": optimizer}}
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    steps = sorted(curve)
    records = [
        {
            "step": step,
            "total_steps": STEPS,
            "tokens": step * BATCH,
            "val_loss": curve[step],
            "elapsed_s": step / 10,
            "train_loss": train_loss if step == steps[-1] else 2.0,
            "tokens_per_s": 1000.0,
            "optim_step_ms": optim_step_ms,
            **(diagnostics or {}).get(step, {}),
        }
        for step in steps
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_sweep_index(runs_dir: Path, diverged: Sequence[str], exit_code: int = 3) -> None:
    """The sweep index train/sweep.py leaves: every run done, but those in `diverged`, whose launch
    failed with `exit_code` (train/cli.py: 3 is diverged)."""
    entries = {path.name: {"status": "done", "exit_code": 0, "error": None} for path in runs_dir.iterdir()}
    entries.update({name: {"status": "failed", "exit_code": exit_code, "error": DIVERGED_LINE} for name in diverged})
    (runs_dir / "sweep_index.json").write_text(json.dumps({"launches": [], "runs": entries}))


def ending(final: float, late: float | None = None) -> dict[int, float]:
    """A curve that validates at 200, 240 and 250, ending at `final` (240: `late`, else final + 0.01)."""
    return {200: final + 0.05, 240: final + 0.01 if late is None else late, 250: final}


# --- records -----------------------------------------------------------------------------


def record(tmp_path, cfg, curves, capsys, diverged=(), train_losses=None):
    """Write a run per seed with a curve (None: never started), record them with --record-only;
    returns (exit code, the printed verdict line, README.md)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, curve in enumerate(curves):
        if curve is not None:
            write_run(runs / f"muon-seed{seed}", cfg, "muon", seed, curve, (train_losses or {}).get(seed, 2.0))
    if diverged:
        write_sweep_index(runs, [f"muon-seed{seed}" for seed in diverged])
    argv = [
        "--seeds",
        *map(str, range(len(curves))),
        "--record",
        str(tmp_path / "record"),
        "--record-only",
        "--",
        "experiment=speedrun_tiny",
        f"out_dir={runs}/" + "${optim.name}-seed${seed}",
    ]
    code = load_script("speedrun").main(argv)
    verdict = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("speedrun_tiny"))
    return code, verdict, (tmp_path / "record" / "README.md").read_text()


def section(readme: str, heading: str) -> str:
    """The text of the README section whose heading starts with `heading`."""
    parts = readme.split("\n## ")
    return next(part for part in parts if part.startswith(heading))


def t_test_text(losses) -> str:
    result = scipy_stats.ttest_1samp(losses, TARGET, alternative="less")
    return f"t = {result.statistic:.3f}, p = {result.pvalue:.3g}"


def test_a_record_reports_the_rule_and_the_t_test_at_the_step_it_names_and_at_the_end(tiny_config, tmp_path, capsys):
    # the mean passes first at step 240 (1.7975: +0.00500); at the end it is lower still
    at_240 = [1.7960, 1.7990, 1.7970, 1.7980]
    finals = [1.7900, 1.7905, 1.7880, 1.7920]
    curves = [{200: 1.85, 240: a, 250: f} for a, f in zip(at_240, finals)]
    code, verdict, readme = record(tmp_path, tiny_config, curves, capsys)
    assert code == 0
    statistic = (TARGET - np.mean(at_240)) * 2
    assert f"**Verdict: PASS** at step 240: mean val loss {np.mean(at_240):.5f} over 4 seeds" in readme
    assert (
        f"(target − mean)·√n = {statistic:+.5f} ≥ 0.004; one-sided t-test at step 240: {t_test_text(at_240)}" in readme
    )
    assert f"4 of 4 seeds finished: PASS at step 240: mean val loss {np.mean(at_240):.5f}" in verdict
    at_step = section(readme, "At the reported step, 240 (the verdict)")
    mean, std = np.mean(at_240), np.std(at_240, ddof=1)
    half = scipy_stats.t.ppf(0.975, 3) * std / 2
    assert f"mean {mean:.5f}, std {std:.5f}, 95% CI ± {half:.5f}" in at_step and t_test_text(at_240) in at_step
    at_end = section(readme, "At the end of the run, step 250\n")
    assert f"mean {np.mean(finals):.5f}, std {np.std(finals, ddof=1):.5f}" in at_end and t_test_text(finals) in at_end
    assert t_test_text(finals) != t_test_text(at_240)


def test_a_nan_final_loss_is_a_failed_seed_and_the_record_fails_naming_it(tiny_config, tmp_path, capsys):
    curves = [ending(1.785), ending(NAN, 1.79), ending(1.786), ending(1.784)]
    code, verdict, readme = record(tmp_path, tiny_config, curves, capsys)
    assert code == 1
    first_line = "# speedrun_tiny record: muon, 250 steps, 4 seeds launched, 3 finished (seed 1 failed)"
    assert readme.splitlines()[0] == first_line
    assert "**Verdict: FAIL**: seed 1 failed, and a failed run counts as a loss above the target" in readme
    assert "| 1 | failed: val loss nan at its last step |" in readme
    finite = [1.785, 1.786, 1.784]
    at_end = section(readme, "At the end of the run, step 250 (over the 3 finished seeds of 4: not a verdict)")
    assert f"mean {np.mean(finite):.5f}, std {np.std(finite, ddof=1):.5f}" in at_end and "nan" not in at_end
    assert "PASS" not in readme and "3 of 4 seeds finished: FAIL" in verdict


@pytest.mark.parametrize("evidence", ["sweep index", "non-finite val loss"])
def test_a_diverged_seed_fails_the_record_even_when_the_others_pass(tiny_config, tmp_path, capsys, evidence):
    curves = [ending(1.780), ending(1.781), {100: 2.3, 120: 2.4}, ending(1.782)]
    if evidence == "sweep index":
        code, verdict, readme = record(tmp_path, tiny_config, curves, capsys, diverged=[2])
        assert f"| 2 | diverged (sweep index: {DIVERGED_LINE}) |" in readme
    else:
        curves[2] = {100: 2.3, 120: NAN}
        code, verdict, readme = record(tmp_path, tiny_config, curves, capsys)
        assert "| 2 | failed: val loss nan at step 120 |" in readme
    assert code == 1
    assert readme.splitlines()[0].endswith("4 seeds launched, 3 finished (seed 2 failed)")
    assert "**Verdict: FAIL**: seed 2 failed" in readme and "PASS" not in readme
    rule = section(readme, "The rule at the last validated steps (over the 3 finished seeds of 4: not a verdict)")
    assert f"| 250 | {np.mean([1.780, 1.781, 1.782]):.5f} | {(TARGET - 1.781) * math.sqrt(3):+.5f} | yes |" in rule


def test_an_unfinished_or_missing_seed_makes_the_record_incomplete_never_pass(tiny_config, tmp_path, capsys):
    curves = [ending(1.780), ending(1.781), {100: 2.3, 200: 1.83}, None]
    # seed 2's last step was skipped (train.max_skipped_steps): a run that goes on, not a failed one
    code, verdict, readme = record(tmp_path, tiny_config, curves, capsys, train_losses={2: NAN})
    assert code == 1
    assert readme.splitlines()[0].endswith("4 seeds launched, 2 finished (seed 2 unfinished, muon-seed3 unfinished)")
    assert "**Verdict: INCOMPLETE**: seed 2, muon-seed3 have not finished; no verdict until every" in readme
    assert "| 2 | unfinished: logged 200 of 250 steps |" in readme
    assert "| ? | no config.yaml; no metrics.jsonl | - | - | - | - | - | muon-seed3 |" in readme
    assert "PASS" not in readme and "2 of 4 seeds finished: INCOMPLETE" in verdict


@pytest.mark.parametrize("exit_code", [1, 2, 75], ids=["crashed", "bad input", "stopped by a signal"])
def test_a_launch_that_failed_without_diverging_leaves_its_seed_unfinished(tiny_config, tmp_path, exit_code):
    runs = tmp_path / "runs"
    write_run(runs / "muon-seed0", tiny_config, "muon", 0, {100: 2.3})
    write_sweep_index(runs, ["muon-seed0"], exit_code)
    (run,) = load_runs([runs])
    assert run.outcome == "unfinished" and run.problems == ["unfinished: logged 100 of 250 steps"]


def test_one_seed_has_no_std_ci_or_t_test_and_says_so(tiny_config, tmp_path, capsys):
    code, _, readme = record(tmp_path, tiny_config, [ending(1.790)], capsys)
    assert code == 0 and "**Verdict: PASS** at step 250" in readme  # (1.80 − 1.79)·1 = 0.01
    at_end = section(readme, "At the end of the run")
    assert "Val loss over 1 seed: mean 1.79000, std –, 95% CI ± –; (target − mean)·√n = +0.01000 (passes" in at_end
    assert "not run: a t-test needs two seeds or more in a group (1 here)" in at_end


def test_identical_seeds_have_zero_spread_and_no_t_test_for_that_reason(tiny_config, tmp_path, capsys):
    _, _, readme = record(tmp_path, tiny_config, [ending(1.790)] * 3, capsys)
    at_end = section(readme, "At the end of the run")
    assert "mean 1.79000, std 0.00000, 95% CI ± 0.00000" in at_end
    assert "not run: the seeds' losses are identical within each group: no spread to test against" in at_end


@pytest.mark.parametrize("losses", [[1.796], [1.798] * 4], ids=["n=1", "n=4"])
def test_a_mean_exactly_on_the_threshold_passes(tiny_config, tmp_path, capsys, losses):
    code, verdict, readme = record(tmp_path, tiny_config, [ending(loss, 1.81) for loss in losses], capsys)
    assert (TARGET - np.mean(losses)) * math.sqrt(len(losses)) == pytest.approx(0.004, abs=1e-15)
    assert code == 0 and f"PASS at step 250: mean val loss {np.mean(losses):.5f} over {len(losses)} seeds" in verdict
    assert "(target − mean)·√n = +0.00400 ≥ 0.004" in readme


# --- comparison reports ------------------------------------------------------------------


def report_groups(tmp_path, cfg, groups: dict[str, list[dict[int, float]]], diverged=()):
    """Run directories per optimizer (a curve per seed), loaded and grouped as scripts/report.py does."""
    runs = tmp_path / "runs"
    for optimizer, curves in groups.items():
        for seed, curve in enumerate(curves):
            write_run(runs / f"{optimizer}-seed{seed}", cfg, optimizer, seed, curve)
    if diverged:
        write_sweep_index(runs, diverged)
    return {group.label: group for group in groups_of(group_runs(load_runs([runs])))}


def table_row(table: str, label: str) -> dict[str, str]:
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return dict(zip(header, (cell.strip() for cell in row.strip("|").split("|"))))


def ci_text(losses) -> str:
    half = scipy_stats.t.ppf(0.975, len(losses) - 1) * scipy_stats.sem(losses)
    return f"{np.mean(losses):.4f} ± {half:.4f}"


def test_a_nan_final_loss_is_listed_as_a_problem_and_its_group_is_not_ranked(tiny_config, tmp_path):
    # aurora's finite seeds are below every muon seed, and its NaN seed comes first
    groups = report_groups(
        tmp_path,
        tiny_config,
        {"muon": [ending(1.80), ending(1.81), ending(1.805)], "aurora": [ending(NAN, 1.9), ending(1.70), ending(1.71)]},
    )
    table = comparison_table(list(groups.values()))
    aurora = table_row(table, "aurora")
    assert aurora["seeds (finished/all)"] == "2/3"
    assert aurora["final val loss (mean ± 95% CI)"] == ci_text([1.70, 1.71]) + " (2 of 3)"
    assert aurora["range"] == "1.7000–1.7100" and "nan" not in table.lower()
    found = "\n".join(findings(list(groups.values())))
    lowest = "Lowest final val loss among the 1 of 2 groups whose every seed finished: muon, "
    assert lowest + ci_text([1.80, 1.81, 1.805]) in found
    assert "Not ranked, as not every seed finished (see the problem runs): aurora (seed 0 failed; 2 of 3 seeds" in found
    assert "every seed of one is below" not in found and "nan" not in found.lower()
    assert problems(list(groups.values())) == [f"{tmp_path}/runs/aurora-seed0: failed: val loss nan at its last step"]
    assert "the finished seeds of one are all below those of the other" in difference(groups["aurora"], groups["muon"])


def test_a_diverged_seed_is_a_problem_and_the_group_statistics_say_n_of_n(tiny_config, tmp_path):
    finals = [1.70, 1.71, 1.72, 1.705]
    groups = report_groups(
        tmp_path,
        tiny_config,
        {
            "aurora": [ending(f) for f in finals[:2]] + [{100: 2.3, 120: 2.4}] + [ending(f) for f in finals[2:]],
            "muon": [ending(1.80), ending(1.81)],
        },
        diverged=["aurora-seed2"],
    )
    table = comparison_table(list(groups.values()))
    aurora = table_row(table, "aurora")
    assert aurora["seeds (finished/all)"] == "4/5"
    assert aurora["final val loss (mean ± 95% CI)"] == ci_text(finals) + " (4 of 5)"
    note = "Every column but tokens/s and the optimizer step's pools the finished seeds only: aurora over 4 of 5."
    assert table.endswith(note)
    assert problems(list(groups.values())) == [f"{tmp_path}/runs/aurora-seed2: diverged (sweep index: {DIVERGED_LINE})"]
    found = findings(list(groups.values()))
    assert found[0].startswith("Lowest final val loss among the 1 of 2 groups whose every seed finished: muon")
    # in the track's pairwise rule the diverged seed is a loss above any other: aurora cannot be the better one
    rule = pairwise(groups["aurora"], groups["muon"])[2]
    assert "→ -inf (a failed seed counts as a loss above any other): B (muon) significantly better" in rule


def test_an_unfinished_seed_leaves_the_pairwise_verdict_incomplete(tiny_config, tmp_path):
    groups = report_groups(
        tmp_path, tiny_config, {"aurora": [ending(1.70), {100: 2.3}], "muon": [ending(1.80), ending(1.81)]}
    )
    assert problems(list(groups.values())) == [f"{tmp_path}/runs/aurora-seed1: unfinished: logged 100 of 250 steps"]
    rule = pairwise(groups["aurora"], groups["muon"])[2]
    assert "→ –: INCOMPLETE: no verdict until every seed has finished (aurora: seed 1 unfinished)" in rule


def test_one_seed_per_group_has_no_ci_range_or_t_test(tiny_config, tmp_path):
    groups = report_groups(tmp_path, tiny_config, {"aurora": [ending(1.70)], "muon": [ending(1.80)]})
    aurora = table_row(comparison_table(list(groups.values())), "aurora")
    assert aurora["final val loss (mean ± 95% CI)"] == "1.7000 ± –" and aurora["range"] == "–"
    assert difference(groups["aurora"], groups["muon"]) == (
        "aurora − muon = -0.1000 (1 vs 1 seeds; every seed of one is below every seed of the other; "
        "no Welch t-test: a t-test needs two seeds or more in a group (1 here))"
    )
    assert "the σ measured in these runs (pooled within the two groups) is –." in pairwise(*groups.values())[3]


def test_identical_seeds_give_the_real_reason_there_is_no_t_test(tiny_config, tmp_path):
    groups = report_groups(tmp_path, tiny_config, {"aurora": [ending(1.70)] * 2, "muon": [ending(1.80)] * 3})
    assert difference(groups["aurora"], groups["muon"]).endswith(
        "no Welch t-test: the seeds' losses are identical within each group: no spread to test against)"
    )


@pytest.mark.parametrize("spread", [0.0005, 0.01], ids=["sigma as assumed", "sigma 4x wider"])
def test_the_pairwise_verdict_names_the_better_group_both_ways_round(tiny_config, tmp_path, spread):
    rng = np.random.default_rng(0)
    better = list(np.round(1.790 + spread * rng.standard_normal(4), 6))
    worse = list(np.round(1.800 + spread * rng.standard_normal(4), 6))
    groups = report_groups(
        tmp_path, tiny_config, {"aurora": [ending(v) for v in better], "muon": [ending(v) for v in worse]}
    )
    statistic = (np.mean(worse) - np.mean(better)) / math.sqrt(1 / 4 + 1 / 4)  # the same steps: no step term
    welch = scipy_stats.ttest_ind(better, worse, equal_var=False)
    sigma = math.sqrt((np.var(better, ddof=1) * 3 + np.var(worse, ddof=1) * 3) / 6)
    forward, backward = pairwise(groups["aurora"], groups["muon"]), pairwise(groups["muon"], groups["aurora"])
    assert statistic >= 0.004
    p = f"two-sided p = {welch.pvalue:.3g}"
    assert f"→ {statistic:.5f}: A (aurora) significantly better; Welch t = {welch.statistic:.2f}, {p}" in forward[2]
    assert f"→ {-statistic:.5f}: B (aurora) significantly better; Welch t = {-welch.statistic:.2f}, {p}" in backward[2]
    assert f"the σ measured in these runs (pooled within the two groups) is {sigma:.5f}." in forward[3]
    misfit = f"The measured σ is {sigma / 0.0013:.1f}× the assumed one: the rule's margin does not fit this setting"
    assert (misfit in forward[3]) == (sigma >= 2 * 0.0013) and (misfit in forward[3]) == (spread == 0.01)


def test_a_baseline_whose_loss_rises_at_the_end_is_one_times_as_fast_as_itself(tiny_config, tmp_path):
    rising = {100: 2.2, 200: 1.90, 225: 1.80, 250: 1.85}  # reaches its final 1.85 between 200 and 225
    faster = {100: 1.95, 200: 1.70, 225: 1.68, 250: 1.67}  # reaches 1.85 between 100 and 200
    groups = report_groups(tmp_path, tiny_config, {"muon": [rising] * 2, "aurora": [faster] * 2})
    table = comparison_table(list(groups.values()), baseline="muon")
    base_tokens = (200 + (1.90 - 1.85) / (1.90 - 1.80) * 25) * BATCH
    fast_tokens = (100 + (1.95 - 1.85) / (1.95 - 1.70) * 100) * BATCH
    muon, aurora = table_row(table, "muon"), table_row(table, "aurora")
    assert muon["tokens to muon's final loss"] == f"{base_tokens:,.0f}" and muon[SPEEDUP] == "1.00×"
    assert aurora["tokens to muon's final loss"] == f"{fast_tokens:,.0f}"
    assert aurora[SPEEDUP] == f"{base_tokens / fast_tokens:.2f}×"


def test_a_crossing_at_the_first_validation_is_a_lower_bound_on_the_speedup(tiny_config, tmp_path):
    baseline = {100: 2.2, 200: 1.90, 250: 1.85}
    early = {100: 1.84, 200: 1.70, 250: 1.67}  # below 1.85 already at its first validation
    groups = report_groups(tmp_path, tiny_config, {"muon": [baseline], "aurora": [early]})
    table = comparison_table(list(groups.values()), baseline="muon", target=1.86)
    aurora = table_row(table, "aurora")
    assert aurora["tokens to muon's final loss"] == aurora["tokens to 1.86"] == f"≤ {100 * BATCH:,.0f}"
    assert aurora[SPEEDUP] == f"≥ {250 / 100:.2f}×"  # the baseline reaches 1.85 at 250, the candidate by 100


def dead_and_starved(dead: Sequence[float], starved: Sequence[float]) -> dict[str, float]:
    """A diagnostic record's MLP keys: `dead[i]` and `starved[i]` in block i, and their pooled means."""
    blocks = range(len(dead))
    return {
        **{diagnostic(block_module(i, MLP_HIDDEN), ACT_DEAD_FRAC): dead[i] for i in blocks},
        **{diagnostic(block_module(i, MLP_UP), STARVED_FRAC): starved[i] for i in blocks},
        DEAD: float(np.mean(dead)),
        STARVED_UP: float(np.mean(starved)),
    }


def test_the_table_shows_each_seeds_worst_block_and_the_step_cost_against_adamw(tiny_config, tmp_path):
    runs = tmp_path / "runs"
    # per seed: the last diagnostic's blocks; an earlier one, worse, must not count
    muon = [([0.1, 0.3], [0.2, 0.6]), ([0.0, 0.5], [0.4, 0.0])]
    for seed, (dead, starved) in enumerate(muon):
        diagnostics = {200: dead_and_starved([0.9, 0.9], [0.9, 0.9]), 250: dead_and_starved(dead, starved)}
        write_run(runs / f"muon-seed{seed}", tiny_config, "muon", seed, ending(1.8), 2.0, 5.0, diagnostics)
    write_run(runs / "adamw-seed0", tiny_config, "adamw", 0, ending(1.9), 2.0, 2.0)
    table = comparison_table(groups_of(group_runs(load_runs([runs]))))
    muon_row, adamw_row = table_row(table, "muon"), table_row(table, "adamw")
    assert muon_row["exactly dead"] == "22.5% (20.0–25.0)"  # the pooled fraction hides a block at 50%
    assert muon_row["exactly dead, worst block"] == "40.0% (30.0–50.0)"
    assert muon_row["starved up rows"] == "30.0% (20.0–40.0)"
    assert muon_row["starved up rows, worst block"] == "50.0% (40.0–60.0)"
    assert adamw_row["exactly dead, worst block"] == "-"
    assert muon_row["optimizer step / adamw's"] == "2.5×" and adamw_row["optimizer step / adamw's"] == "1.0×"
    without_adamw = comparison_table(groups_of(group_runs(load_runs([runs / "muon-seed0", runs / "muon-seed1"]))))
    assert "optimizer step /" not in without_adamw
    # two AdamW groups (another lr): no one reference, so no column
    other_lr = {
        **tiny_config,
        "optim": {**tiny_config["optim"], "matrix": {**tiny_config["optim"]["matrix"], "lr": 0.5}},
    }
    write_run(runs / "adamw-other-seed0", other_lr, "adamw", 0, ending(1.9), 2.0, 4.0)
    two_adamw = groups_of(group_runs(load_runs([runs])))
    assert len([g for g in two_adamw if g.label.startswith("adamw")]) == 2
    assert "optimizer step /" not in comparison_table(two_adamw)


def test_the_report_script_prints_the_problem_runs_and_never_ranks_them(tiny_config, tmp_path, capsys):
    report_groups(
        tmp_path, tiny_config, {"aurora": [ending(NAN, 1.9), ending(1.70)], "muon": [ending(1.80), ending(1.81)]}
    )
    out = tmp_path / "report"
    assert load_script("report").main([str(tmp_path / "runs"), "--out", str(out), "--compare", "aurora", "muon"]) == 0
    printed = capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert text in printed
    assert f"## {PROBLEMS_HEADING}\n\n- {tmp_path}/runs/aurora-seed0: failed: val loss nan at its last step" in text
    assert "Lowest final val loss among the 1 of 2 groups whose every seed finished: muon" in text
