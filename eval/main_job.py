"""The README's main job: did neurons die, and which optimizer is better?

    python scripts/compare_optimizers.py                            # AdamW, Muon, Aurora x 2 seeds, ~9 min on 2 cores
    python scripts/compare_optimizers.py --optimizers muon aurora --seeds 0 1 2 -- model.mlp_expansion=16
    python scripts/compare_optimizers.py --experiment neuron_death --out runs/nd -- data=shakespeare

Trains every optimizer with every seed on the experiment's setting (default `quickstart`: the tiny
GPT at MLP x8 on the byte-level built-in corpus, 300 steps of 2,048 bytes, neuron diagnostics
every 20 steps), two runs at a time, printing progress with an ETA. Then it writes into --out
(default runs/quickstart): report.md (the setting; a table of final val loss mean ± 95% CI and
range over seeds, exactly-dead and nearly-dead units, starved up-projection rows, leverage CV,
tokens/s; what it found and how sure; a generated sample per optimizer), comparison.png (val
loss with a seed band next to the death and starvation panels), the runs' directories and
sweep_index.json. Anything after `--` is a Hydra override for every run. Rerunning with the same
--out skips finished runs, resumes interrupted ones and rewrites the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eval.plots import DEATH_PANELS, plot_groups
from eval.report import PROBLEMS_HEADING, comparison_table, findings, groups_of, problems
from eval.runs import group_runs, load_runs
from eval.sample import generate, load_for_sampling
from train.cli import exit_code
from train.config import CONF_DIR, compose_sweep
from train.rundir import describe_hardware, read_launches
from train.sweep import Point, format_duration, run_points

DEFAULT_OPTIMIZERS = ("adamw", "muon", "aurora")
SAMPLE_PROMPT = "HAMLET.\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--experiment", default="quickstart", help="conf/experiment option (default: quickstart)")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="where the runs and the report go")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time (default: 2)")
    parser.add_argument("--sample-tokens", type=int, default=300, help="length of each generated sample (0: none)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    available = sorted(p.stem for p in (CONF_DIR / "optim").glob("*.yaml"))
    unknown = [o for o in args.optimizers if o not in available]
    if unknown:
        parser.error(f"unknown optimizer(s) {unknown}; available: {available}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def sweep_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [
        f"experiment={args.experiment}",
        f"optim={','.join(args.optimizers)}",
        f"seed={','.join(map(str, args.seeds))}",
        f"out_dir={args.out}/" + "${optim.name}-seed${seed}",
        *args.overrides,
    ]
    if args.jobs > 1 and not any(o.startswith("train.threads=") for o in args.overrides):
        overrides.append(f"train.threads={max(1, (os.cpu_count() or 1) // args.jobs)}")
    return overrides


def scale_line(cfg: dict, seeds: list[int]) -> str:
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    return (
        f"model {model['name']} (d_model {model['d_model']}, {model['n_layer']} layers, MLP x{model['mlp_expansion']:g}, "
        f"{model['activation']}), data {data['name']} ({data['tokenizer']} tokens), seeds {', '.join(map(str, seeds))}, "
        f"{train['steps']} steps of {train['batch_tokens']:,} tokens ({train['steps'] * train['batch_tokens']:,} a run), "
        f"val on {data['val_tokens']:,} tokens, each optimizer at its conf/optim defaults"
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
        lines += [f"### {label} (seed {run.seed}, val loss {run.final_val_loss:.3f})", "", "```", SAMPLE_PROMPT + text, "```", ""]
    return lines


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    points = [Point(overrides, cfg) for overrides, cfg in compose_sweep(sweep_overrides(args))]
    cfg = points[0].config
    scale = scale_line(cfg, args.seeds)
    print(f"main job: {len(points)} runs ({', '.join(args.optimizers)} x seeds {args.seeds}), {args.jobs} at a time\n{scale}", flush=True)
    points, index = run_points(points, ["scripts/compare_optimizers.py", *argv], jobs=args.jobs)

    runs = load_runs([point.out_dir for point in points])
    grouped = group_runs(runs)
    groups = groups_of(grouped)
    figure = plot_groups(grouped, [("val_loss", "step", "val loss (nats per token)"), *DEATH_PANELS], args.out / "comparison.png", columns=4)
    found = findings(groups)
    missing = problems(groups)
    elapsed = max((run.records[-1]["elapsed_s"] for run in runs if run.records), default=0)
    report = "\n".join(
        [
            "# Optimizer comparison", "", scale, "", machine_line(grouped), "",
            comparison_table(groups), "",
            "Final val loss: mean ± 95% CI (Student t) over the finished seeds, and the range. Exactly dead: zero "
            "activation on every probe token; nearly dead: mean |activation| below 1% of the layer's; starved: "
            "update leverage below 0.1·n/m in each of the last 5 diagnostics (docs/neuron_death.md). Values at the "
            "last step, mean (min–max) over seeds.", "",
            "## What it found", "", *[line if line.startswith("  ") else f"- {line}" for line in found], "",
            *([f"## {PROBLEMS_HEADING}", "", *[f"- {line}" for line in missing], ""] if missing else []),
            f"## Samples (prompt {SAMPLE_PROMPT.strip()!r}, temperature 0.8, top-k 50, sampling seed 0)", "",
            *samples(grouped, args.sample_tokens),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report + "\n")
    print("\n" + report)
    print("outputs:")
    for point in points:
        print(f"  {point.out_dir}  (metrics.jsonl, console.log, checkpoints/)")
    print(f"  {args.out / 'report.md'}\n  {figure or '(no figure: nothing was logged)'}\n  {index.path}")
    print(f"training time per run: up to {format_duration(elapsed)}; rerun the same command to resume or re-report")
    return 1 if any(point.status == "failed" for point in points) else 0


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
