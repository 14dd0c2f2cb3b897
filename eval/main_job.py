"""The README's main job (scripts/compare_optimizers.py): did neurons die, and which optimizer is
better? Every optimizer trains with every seed on an experiment's setting (`run_main_job`), then
`main_job_report` writes REPORT (the setting and machine, the comparison table, what it found, a
generated sample per optimizer) and FIGURE (val loss beside the death and starvation panels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.plots import DEATH_PANELS, plot_groups
from eval.report import PROBLEMS_HEADING, comparison_table, findings_bullets, groups_of, problems
from eval.runs import group_runs, load_runs
from eval.sample import generate, load_for_sampling
from train.config import compose_sweep
from train.metric_names import ELAPSED_S, STEP, VAL_LOSS
from train.rundir import describe_hardware, read_launches
from train.sweep import Point, SweepIndex, run_points, with_threads

DEFAULT_OPTIMIZERS = ("adamw", "muon", "aurora")
SAMPLE_PROMPT = "HAMLET.\n"
REPORT, FIGURE = "report.md", "comparison.png"


@dataclass(frozen=True)
class MainJob:
    """What to train and where, as scripts/compare_optimizers.py's options set it (its help says
    what each does)."""

    optimizers: list[str]
    seeds: list[int]
    experiment: str
    out: Path
    jobs: int
    sample_tokens: int
    overrides: list[str]

    def sweep_overrides(self) -> list[str]:
        """Every optimizer x seed of the experiment, a run directory each in `out`, the user's
        overrides last, the cores shared between the jobs."""
        return with_threads(
            [
                f"experiment={self.experiment}",
                f"optim={','.join(self.optimizers)}",
                f"seed={','.join(map(str, self.seeds))}",
                f"out_dir={self.out}/" + "${hydra:runtime.choices.optim}-seed${seed}",
                *self.overrides,
            ],
            self.jobs,
        )


def scale_line(cfg: dict, seeds: list[int]) -> str:
    """The setting every run shares, from the first point's config (printed before any run exists)."""
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    return (
        f"model {model['name']} (d_model {model['d_model']}, {model['n_layer']} layers, "
        f"MLP x{model['mlp_expansion']:g}, {model['activation']}), data {data['name']} ({data['tokenizer']} tokens), "
        f"seeds {', '.join(map(str, seeds))}, {train['steps']} steps of {train['batch_tokens']:,} tokens "
        f"({train['steps'] * train['batch_tokens']:,} a run), val on {data['val_tokens']:,} tokens, each optimizer "
        "at its conf/optim defaults"
    )


def machine_line(groups: dict) -> str:
    """Where the runs ran and the dtype of each optimizer's polar iteration, from their launch
    records: what explains a slow run (a bf16 polar on a CPU without bf16 units)."""
    launches = {label: read_launches(runs[0].path / "launches.jsonl") for label, runs in groups.items() if runs}
    last = [records[-1] for records in launches.values() if records]
    if not last:
        return "machine: unknown (no launch records)"
    dtypes = ", ".join(
        f"{label} {records[-1].get('ns_dtype') or 'none'}" for label, records in launches.items() if records
    )
    hardware = last[0]["hardware"]
    return (
        f"machine: {describe_hardware(hardware)}, threads per run {hardware.get('torch_threads')}, "
        f"torch {last[0].get('torch')}; polar iteration dtype: {dtypes}"
    )


def samples(groups: dict, tokens: int) -> list[str]:
    """A sample from the first complete seed of each group, same prompt and sampling seed."""
    lines = []
    for label, runs in groups.items():
        run = next((r for r in runs if r.final_val_loss is not None), None)
        if run is None or tokens <= 0:
            continue
        model, tokenizer, seq_len = load_for_sampling(str(run.path), "cpu")
        text = generate(model, tokenizer, SAMPLE_PROMPT, tokens, seq_len, temperature=0.8, top_k=50, seed=0)
        heading = f"### {label} (seed {run.seed}, val loss {run.final_val_loss:.3f})"
        lines += [heading, "", "```", SAMPLE_PROMPT + text, "```", ""]
    return lines


def run_main_job(job: MainJob, command: list[str]) -> tuple[list[Point], SweepIndex]:
    """Train every run not done yet, two (jobs) at a time; returns the points and the sweep index."""
    points = [Point(overrides, cfg) for overrides, cfg in compose_sweep(job.sweep_overrides())]
    runs = f"{len(points)} runs ({', '.join(job.optimizers)} x seeds {job.seeds}), {job.jobs} at a time"
    print(f"main job: {runs}\n{scale_line(points[0].config, job.seeds)}", flush=True)
    return run_points(points, command, jobs=job.jobs)


def main_job_report(job: MainJob, points: list[Point]) -> tuple[str, Path | None, float]:
    """Write REPORT and FIGURE into job.out; returns the report, the figure (None when nothing was
    logged) and the longest run's training time in seconds."""
    runs = load_runs([point.out_dir for point in points])
    grouped = group_runs(runs)
    groups = groups_of(grouped)
    panels = [(VAL_LOSS, STEP, "val loss (nats per token)"), *DEATH_PANELS]
    figure = plot_groups(grouped, panels, job.out / FIGURE, columns=4)
    missing = problems(groups)
    elapsed = max((run.records[-1][ELAPSED_S] for run in runs if run.records), default=0)
    report = "\n".join(
        [
            "# Optimizer comparison",
            "",
            scale_line(points[0].config, job.seeds),
            "",
            machine_line(grouped),
            "",
            comparison_table(groups),
            "",
            "Final val loss: mean ± 95% CI (Student t) over the finished seeds, and the range. Exactly dead: zero "
            "activation on every probe token; nearly dead: mean |activation| below 1% of the layer's; starved: "
            "update leverage below 0.1·n/m in each of the last "
            f"{points[0].config['diagnostics']['starvation_window']} diagnostics, the update being the direction a "
            "matrix optimizer applies or, for any other optimizer, the parameter change of the step, weight decay "
            "included (docs/neuron_death.md). Values at the last step, mean (min–max) over seeds.",
            "",
            "## What it found",
            "",
            *findings_bullets(groups),
            "",
            *([f"## {PROBLEMS_HEADING}", "", *[f"- {line}" for line in missing], ""] if missing else []),
            f"## Samples (prompt {SAMPLE_PROMPT.strip()!r}, temperature 0.8, top-k 50, sampling seed 0)",
            "",
            *samples(grouped, job.sample_tokens),
        ]
    )
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / REPORT).write_text(report + "\n")
    return report, figure, elapsed
