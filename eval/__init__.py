"""Evaluation, in two halves: scoring a model, and analysing runs.

Scoring a model (HellaSwag through lm-evaluation-harness, and an llm.c-style second score):
    eval/scoring.py          batched continuation log-likelihoods and the multiple-choice maths (torch only)
    eval/adapter.py          AuroraLM, the lm-eval model "aurora-bench" (imports lm-eval)
    eval/hellaswag.py        data sources, both scoring conventions, `python -m eval.hellaswag`, quick_score
    eval/lm_eval_cli.py      lm-eval's own command line with "aurora-bench" registered
    eval/sample.py           text generated from a checkpoint

Analysing runs (the scripts/ commands are their argparse shells; metric names: train/metric_names.py):
    eval/runs.py             run directories as data: config, metrics, outcome, labels and groups
    eval/stats.py            the statistics results are judged by (pure functions)
    eval/report.py           comparing groups of runs: the table, what it found, the pairwise test
    eval/plots.py            figures of runs (matplotlib, imported only when a figure is drawn)
    eval/comparison.py       the comparison report over runs (scripts/report.py)
    eval/main_job.py         the README's main job: train every optimizer x seed, then report
                             (scripts/compare_optimizers.py)
    eval/tuning.py           equal-budget tuning: samplers, trials, winners on fresh seeds (scripts/tune.py)
    eval/record.py           a benchmark attempt and its record, judged by the track's rule (scripts/speedrun.py)
    eval/neuron_death.py     the neuron-death tables and plots (scripts/neuron_death_report.py)
    eval/death_mechanism.py  per-unit traces aligned on each unit's death (scripts/death_mechanism.py)

eval imports train (the run directory, the config, the sweep launcher); train never imports eval.
Importing this package is cheap: lm-eval, datasets, matplotlib and wandb are imported only by the
modules and functions that use them. See docs/eval.md.
"""
