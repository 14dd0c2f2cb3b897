"""The field's optimizers (optim/field.py, the `optimizers` extra): one update step of each
against its paper's formula, written out here; the validation at Schedule-Free's evaluation point;
the one-line error when the extra is missing; and the main job accepting them.
(Every conf/optim file also passes python -m optim.check: tests/test_optim_check.py.)"""

import math
import sys

import pytest
import torch

pytest.importorskip("pytorch_optimizer", reason="the optimizers extra: pip install -e '.[optimizers]'")

from eval.main_job import MainJob
from optim import build_optimizer
from optim.field import MARS, AdEMAMix, Lion, ScheduleFreeAdamW
from tests.conftest import micro_overrides
from tests.test_scripts import load_script
from train import observers
from train.config import compose_sweep
from train.observers import Validation, evaluation_point
from train.run import build_run

SHAPE, STEPS = (6, 5), 4
FP32 = {"rtol": 1e-6, "atol": 1e-7}  # fp32 rounding: the library and the formula order operations differently


def gradients(steps: int = STEPS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(SHAPE, generator=generator) for _ in range(steps)]


def library_steps(optimizer_class, grads, **options) -> torch.Tensor:
    param = torch.nn.Parameter(torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)))
    optimizer = optimizer_class([param], **options)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


def start() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def test_lion_is_the_papers_algorithm_2():
    # Chen et al. 2023, Algorithm 2: c = b1 m + (1 - b1) g; theta -= lr (sign(c) + wd theta); m = b2 m + (1 - b2) g
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.5
    theta, m = start(), torch.zeros(SHAPE)
    for g in gradients():
        c = b1 * m + (1 - b1) * g
        theta = theta - lr * (torch.sign(c) + wd * theta)
        m = b2 * m + (1 - b2) * g
    torch.testing.assert_close(library_steps(Lion, gradients(), lr=lr, betas=(b1, b2), weight_decay=wd), theta, **FP32)


@pytest.mark.parametrize("warmup_steps", [None, 3])
def test_ademamix_is_the_papers_algorithm_1_with_its_alpha_and_beta3_schedulers(warmup_steps):
    # Pagliardini et al. 2024, Algorithm 1 and section 3's schedulers (T = warmup_steps):
    #   alpha_t = min(t alpha / T, alpha); beta3_t = min(exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3)
    lr, (b1, b2, b3), alpha, eps, wd = 0.01, (0.9, 0.999, 0.9999), 5.0, 1e-8, 0.1
    theta, m1, m2, nu = start(), torch.zeros(SHAPE), torch.zeros(SHAPE), torch.zeros(SHAPE)
    for t, g in enumerate(gradients(), start=1):
        alpha_t, b3_t = alpha, b3
        if warmup_steps is not None:
            fraction = t / warmup_steps
            alpha_t = min(t * alpha / warmup_steps, alpha)
            exponent = math.log(b1) * math.log(b3) / ((1 - fraction) * math.log(b3) + fraction * math.log(b1))
            b3_t = min(math.exp(exponent), b3)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3_t * m2 + (1 - b3_t) * g
        nu = b2 * nu + (1 - b2) * g * g
        m1_hat, nu_hat = m1 / (1 - b1**t), nu / (1 - b2**t)
        theta = theta - lr * ((m1_hat + alpha_t * m2) / (nu_hat.sqrt() + eps) + wd * theta)
    options = {"lr": lr, "betas": (b1, b2, b3), "alpha": alpha, "eps": eps, "weight_decay": wd, "weight_decouple": True}
    got = library_steps(AdEMAMix, gradients(), t_alpha_beta3=warmup_steps, **options)
    torch.testing.assert_close(got, theta, **FP32)


def test_mars_adamw_is_the_papers_algorithm_with_the_previous_gradient():
    # Yuan et al. 2024, Algorithm 2 (MARS-AdamW, approximate): c = g + gamma b1/(1 - b1) (g - g_prev), its norm
    # clipped to 1; then AdamW on c with bias correction and decoupled weight decay. g_prev of the first step is 0.
    lr, (b1, b2), gamma, eps, wd = 0.01, (0.95, 0.99), 0.025, 1e-8, 0.1
    theta, m, v, previous = start(), torch.zeros(SHAPE), torch.zeros(SHAPE), torch.zeros(SHAPE)
    for t, g in enumerate(gradients(), start=1):
        c = g + gamma * b1 / (1 - b1) * (g - previous)
        c = c / c.norm() if c.norm() > 1 else c
        m, v = b1 * m + (1 - b1) * c, b2 * v + (1 - b2) * c * c
        theta = theta * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        previous = g
    options = {"lr": lr, "betas": (b1, b2), "gamma": gamma, "eps": eps, "weight_decay": wd}
    torch.testing.assert_close(library_steps(MARS, gradients(), **options), theta, **FP32)


def schedule_free_reference(lr, b1, b2, eps, wd):
    """Defazio et al. 2024, Algorithm 1 (AdamW form, r = 0, weight lr^2, constant lr): the gradient at
    y = (1 - b1) z + b1 x; z -= lr (g / (sqrt(v_hat) + eps) + wd y); x = (1 - c) x + c z with
    c = w_t / sum w. Returns y and x after the steps."""
    z = x = start()
    v, weight_sum = torch.zeros(SHAPE), 0.0
    for t, g in enumerate(gradients(), start=1):
        y = (1 - b1) * z + b1 * x
        v = b2 * v + (1 - b2) * g * g
        z = z - lr * (g / ((v / (1 - b2**t)).sqrt() + eps) + wd * y)
        weight_sum += lr**2
        c = lr**2 / weight_sum
        x = (1 - c) * x + c * z
    return (1 - b1) * z + b1 * x, x


def test_schedule_free_adamw_trains_at_y_and_evaluates_at_x_as_the_paper():
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    y, x = schedule_free_reference(lr, b1, b2, eps, wd)
    param = torch.nn.Parameter(start())
    optimizer = ScheduleFreeAdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for grad in gradients():
        param.grad = grad.clone()
        optimizer.step()
    torch.testing.assert_close(param.detach(), y, **FP32)
    with evaluation_point(optimizer):
        torch.testing.assert_close(param.detach(), x, rtol=1e-5, atol=1e-6)  # x = (y - (1 - b1) z) / b1 rounds
    torch.testing.assert_close(param.detach(), y, rtol=1e-5, atol=1e-6)
    assert all(group["train_mode"] for group in optimizer.param_groups)


class Switches(torch.optim.SGD):
    """Records the eval()/train() calls a Schedule-Free optimizer would get."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.calls = []

    def eval(self):
        self.calls.append("eval")

    def train(self):
        self.calls.append("train")


def test_validation_evaluates_at_the_optimizers_evaluation_point_and_trains_on_after(monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = Switches(model.parameters())
    seen = []
    monkeypatch.setattr(observers, "validation_batches", lambda *args: iter(()))
    monkeypatch.setattr(observers, "evaluate", lambda *args: seen.append(list(optimizer.calls)) or 1.5)
    cfg = {"train": {"micro_batch": 1, "seq_len": 4, "precision": "fp32"}, "data": {"val_tokens": 8}}
    runtime = observers.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    record = {}
    Validation(cfg, model, [], runtime, optimizer).after_step(1, record, None)
    assert seen == [["eval"]] and optimizer.calls == ["eval", "train"] and record["val_loss"] == 1.5


def test_an_optimizer_without_eval_and_train_is_evaluated_where_it_trains():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with evaluation_point(optimizer):  # torch.optim.Optimizer has neither: nothing to call
        pass


def test_a_field_optimizer_without_its_extra_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # what a core install without the extra sees
    monkeypatch.delitem(sys.modules, "optim.field")
    sections = {section: {} for section in ("matrix", "embed", "head", "scalar")}
    cfg = {"name": "lion", "_target_": "optim.field.Lion", "takes": "all", **sections}
    with pytest.raises(ValueError, match=r"pip install -e '\.\[optimizers\]'") as caught:
        build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert len(str(caught.value).splitlines()) == 1


def table_rows(report: str) -> dict[str, dict[str, str]]:
    """The report's comparison table: {group: {column: cell}}."""
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return {row[0]: dict(zip(header, row)) for row in rows if not set(row[0]) <= set("-: ")}


def test_the_main_job_reports_loss_and_neuron_death_for_the_field_optimizers(micro_shards, tmp_path):
    # scripts/compare_optimizers.py --optimizers soap schedulefree_adamw, diagnostics on as in the main job: SOAP
    # on the matrices beside AdamW (one SplitOptimizer), Schedule-Free on every group (validating at x each time);
    # their updates are their parameter changes (train/diagnostics.py captured_updates).
    compare = load_script("compare_optimizers")
    names = ("soap", "schedulefree_adamw")
    argv = ["--optimizers", *names, "--seeds", "0", "--sample-tokens", "0", "--out", str(tmp_path)]
    diagnostics = ("diagnostics.every=2", "diagnostics.starvation_window=1", "diagnostics.probe_tokens=256")
    overrides = micro_overrides(micro_shards, "train.steps=4", "train.val_every=2", *diagnostics)
    assert compare.main([*argv, *overrides]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "in each of the last 1 diagnostics" in report and "the parameter change of the step" in report
    rows = table_rows(report)
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        assert row["final val loss (mean ± 95% CI)"] != "-", name
        for column in ("exactly dead", "starved up rows", "up leverage CV"):
            assert row[column] not in ("", "-"), (name, column)


@pytest.mark.parametrize(
    "command",
    [
        ["scripts/compare_optimizers.py", "--optimizers", "soap", "kron", "dion", "aurora"],
        ["python -m train", "-m", "optim=soap,lion", "diagnostics.every=20"],
    ],
    ids=["main-job", "multirun"],
)
def test_the_main_job_and_a_multirun_build_every_run_of_the_field_optimizers_with_diagnostics(
    micro_shards, tmp_path, command
):
    # What each run of the command builds before its first step (the composed config, the optimizer, the
    # observers and what they need), in-process; the runs themselves are the test above.
    if command[0] == "python -m train":
        overrides = [*command[2:], "out_dir=" + str(tmp_path) + "/${optim.name}"]
    else:
        compare = load_script("compare_optimizers")
        job = MainJob(**vars(compare.parse_args([*command[1:], "--out", str(tmp_path)])))
        overrides = job.sweep_overrides()
    for _, cfg in compose_sweep([*overrides, *micro_overrides(micro_shards)]):
        run = build_run(cfg)
        assert cfg["diagnostics"]["every"] and "neurons" in run.observers, cfg["optim"]["name"]
