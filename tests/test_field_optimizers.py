"""The field's optimizers (optim/field.py, the `optimizers` extra, and optim/adam_mini.py): update steps
of each against its paper's formula or a transcription of its authors' reference code, written out
here; the validation at Schedule-Free's evaluation point; the one-line error when the extra is
missing; and the main job accepting them.
(Every conf/optim file also passes python -m optim.check: tests/test_optim_check.py.)"""

import math
import re
import sys

import pytest
import torch

pytest.importorskip("pytorch_optimizer", reason="the optimizers extra: pip install -e '.[optimizers]'")

from eval.main_job import MainJob
from model import GPT, GPTConfig
from optim import build_optimizer
from optim.adam_mini import AdamMini
from optim.field import MARS, SOAP, AdEMAMix, Kron, Lion, ScheduleFreeAdamW
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
    # scripts/compare_optimizers.py --optimizers soap schedulefree_adamw adam_mini, diagnostics on as in the main
    # job: SOAP on the matrices beside AdamW (one SplitOptimizer), Schedule-Free on every group (validating at x
    # each time), Adam-mini with the overridden model's heads; their updates are their parameter changes
    # (train/diagnostics.py captured_updates).
    compare = load_script("compare_optimizers")
    names = ("soap", "schedulefree_adamw", "adam_mini")
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
        for column in ("exactly dead", "exactly dead, worst block", "starved up rows", "up leverage CV"):
            assert row[column] not in ("", "-"), (name, column)


# --- SOAP and PSGD-Kron against their authors' code ------------------------------------------------


def reference_soap(theta, grads, lr, betas, eps, weight_decay, frequency):
    """SOAP on one matrix as its authors' code runs it (github.com/nikhilvyas/SOAP, soap.py at commit
    a1e553530fde97d0e6b307d7c82ac6d38b072340, which keeps the first moment in the eigenbasis), restated
    for a 2-D parameter without merged dims, normalisation or a factor over max_precond_dim, shampoo
    beta = beta2. The first gradient only starts the preconditioner: the parameter moves from the second.
    Returns theta after the steps."""
    beta1, beta2 = betas
    rows, cols = theta.shape
    left, right = torch.zeros(rows, rows), torch.zeros(cols, cols)
    first, second = torch.zeros_like(theta), torch.zeros_like(theta)  # Adam's moments, in the eigenbasis

    def project(x):  # into the eigenbasis
        return q_left.T @ x @ q_right

    def project_back(x):
        return q_left @ x @ q_right.T

    def eigenbasis(factor):  # eigenvectors by decreasing eigenvalue
        return torch.linalg.eigh(factor + 1e-30 * torch.eye(factor.shape[0]))[1].flip(1)

    q_left = q_right = None
    step = 0
    for g in grads:
        if q_left is not None:
            g_projected = project(g)
            step += 1
            first = beta1 * first + (1 - beta1) * g_projected
            second = beta2 * second + (1 - beta2) * g_projected.square()
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            theta = theta - step_size * project_back(first / (second.sqrt() + eps))
            theta = theta - lr * weight_decay * theta
            first = project_back(first)
        left = left.lerp(g @ g.T, 1 - beta2)
        right = right.lerp(g.T @ g, 1 - beta2)
        if q_left is None:
            q_left, q_right = eigenbasis(left), eigenbasis(right)
        elif step % frequency == 0:  # one power iteration and QR, the basis sorted by its estimated eigenvalues
            bases = []
            for dim, (factor, basis) in enumerate(((left, q_left), (right, q_right))):
                order = torch.argsort(torch.diag(basis.T @ factor @ basis), descending=True)
                second = second.index_select(dim, order)
                bases.append(torch.linalg.qr(factor @ basis[:, order])[0])
            q_left, q_right = bases
        if step > 0:
            first = project(first)
    return theta


def test_soap_is_its_authors_code_with_the_eigenbasis_refreshed_twice():
    lr, betas, eps, weight_decay, frequency = 0.01, (0.95, 0.95), 1e-8, 0.01, 2
    grads = gradients(6)  # 5 parameter steps; the basis refreshed by QR after steps 2 and 4
    options = {"betas": betas, "eps": eps, "weight_decay": weight_decay, "precondition_frequency": frequency}
    got = library_steps(SOAP, grads, lr=lr, **options)
    torch.testing.assert_close(got, reference_soap(start(), grads, lr, betas, eps, weight_decay, frequency), **FP32)


def lower_bound_of_spectral_norm(a):
    """kron_torch's cheap lower bound of a symmetric matrix's spectral norm: the matrix scaled by its
    largest entry, applied twice to its column of largest norm."""
    largest = a.abs().max()
    a = a / largest
    x = a[:, torch.argmax((a * a).sum(dim=0))] @ a
    return (a @ (x / x.norm())).norm() * largest


def reference_kron(theta, grads, lr, momentum, weight_decay, update_probability, damping):
    """PSGD-Kron on one matrix as github.com/evanatyourservice/kron_torch runs it (kron_torch/kron.py at
    commit 884427c32bc45e8293e20c26c85e4ccc4f68c9d1), restated eagerly for a 2-D parameter with two
    triangular factors (Q_L, Q_R), without balancing; the probe vector V of step t is torch.randn after
    torch.manual_seed(t - 1), the draws optim/field.py's Kron makes. update_probability: a number, or
    None for kron_torch's schedule. damping: kron_torch's momentum + sqrt(eps) mean|momentum| V before the
    fit (since its commit 2afaa14), which then is also the momentum it preconditions. Returns theta."""
    rows, cols = theta.shape
    q_left, q_right = torch.eye(rows), torch.eye(cols)
    buffer, counter, tiny = torch.zeros_like(theta), 0, torch.finfo(torch.float32).tiny
    for t, g in enumerate(grads, start=1):
        probability = update_probability
        if probability is None:  # 1 for 500 steps, then exp(-0.001 (t - 1 - 500)), at least 0.03
            probability = torch.tensor(-0.001 * (t - 1 - 500.0)).exp().clamp(0.03, 1.0)
        counter += 1
        update = counter >= 1 / probability
        counter = 0 if update else counter
        buffer = momentum * buffer + (1 - momentum) * g
        debiased = buffer / (1 - momentum**t)
        if update:
            torch.manual_seed(t - 1)
            v = torch.randn_like(debiased)
            if damping:
                debiased = debiased + math.sqrt(torch.finfo(torch.float32).eps) * debiased.abs().mean() * v
            a = q_left @ debiased @ q_right.T
            conj_b = torch.linalg.inv(q_left).T @ v @ torch.linalg.inv(q_right)
            for q, term_a, term_b in ((q_left, a @ a.T, conj_b @ conj_b.T), (q_right, a.T @ a, conj_b.T @ conj_b)):
                step = 0.1 * torch.triu(term_a - term_b) / lower_bound_of_spectral_norm(term_a + term_b).clamp(min=tiny)
                q.sub_(step @ q)
        preconditioned = q_left.T @ q_left @ debiased @ q_right.T @ q_right
        preconditioned = preconditioned * torch.clamp(1.1 / (preconditioned.square().mean().sqrt() + 1e-12), max=1.0)
        theta = theta - lr * (preconditioned + weight_decay * theta)
    return theta


# Balancing rescales Q_L by c and Q_R by 1/c, which leaves the preconditioner and the fit unchanged,
# so the steps at which each implementation balances (its own coin) do not change the update: balancing
# at every preconditioner update (balance_prob 1) matches the reference, which never balances.
@pytest.mark.parametrize("update_probability, balance_prob", [(None, 0.0), (0.5, 0.0), (None, 1.0)])
def test_kron_is_its_authors_code_without_its_damping(update_probability, balance_prob):
    lr, momentum, weight_decay = 0.01, 0.9, 0.1
    options = {"momentum": momentum, "weight_decay": weight_decay, "balance_prob": balance_prob}
    got = library_steps(Kron, gradients(), lr=lr, pre_conditioner_update_probability=update_probability, **options)
    expected = reference_kron(start(), gradients(), lr, momentum, weight_decay, update_probability, damping=False)
    torch.testing.assert_close(got, expected, **FP32)


# --- Adam-mini against its authors' code -------------------------------------------------------------

# Every kind of parameter: biases, a gated MLP, Q/K of 2 heads; d_model = n_head x head_dim, as the
# authors' head size (dim² / n_heads elements) assumes.
ADAM_MINI_MODEL = GPTConfig(
    vocab_size=32, n_layer=2, n_head=2, head_dim=8, d_model=16, mlp_expansion=2.0, activation="swiglu", bias=True
)
# Our parameter names -> the torchtitan Llama names the authors' code recognises (their examples/llama).
LLAMA_NAMES = (
    (r"^embed\.", "tok_embeddings."),
    (r"^embed_norm\.", "input_norm."),
    (r"^final_norm\.", "norm."),
    (r"^lm_head\.", "output."),
    (r"^blocks\.(\d+)\.attn_norm\.", r"layers.\1.attention_norm."),
    (r"^blocks\.(\d+)\.mlp_norm\.", r"layers.\1.ffn_norm."),
    (r"^blocks\.(\d+)\.attn\.(q|k|v)\.", r"layers.\1.attention.w\2."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.attention.wo."),
    (r"^blocks\.(\d+)\.mlp\.gate\.", r"layers.\1.feed_forward.w1."),
    (r"^blocks\.(\d+)\.mlp\.up\.", r"layers.\1.feed_forward.w3."),
    (r"^blocks\.(\d+)\.mlp\.down\.", r"layers.\1.feed_forward.w2."),
)


def llama_name(name: str) -> str:
    for pattern, replacement in LLAMA_NAMES:
        if re.search(pattern, name):
            return re.sub(pattern, replacement, name)
    raise AssertionError(f"no Llama name for {name}")


def reference_adam_mini(params, grads, lr, betas, eps, weight_decay, dim, n_heads, single_value):
    """The authors' Adam_mini.step on one process (github.com/zyushun/Adam-mini, adam_mini/adam_mini.py,
    version 1.1.1, commit 57b7d1e1305e7c001b560b42555af924248f569d), restated: its substring tests on the
    Llama names choose each parameter's branch; single_value is the README's `wv_names = {}`.
    params: {our name: tensor}, changed in place; grads: one {our name: gradient} per step."""
    beta1, beta2 = betas
    value_names = set() if single_value else {"v_proj", "wv", "value"}
    per_row_names = {"embed", "embd", "wte", "lm_head", "output", "final_layer", "o_proj", "wo", "attn.proj"}
    per_row_names |= {"feed_forward", "linear", "mlp"} | value_names
    head_numel = dim * dim // n_heads
    m = {name: torch.zeros_like(p) for name, p in params.items()}
    v = dict.fromkeys(params, 0.0)
    for step, step_grads in enumerate(grads, start=1):
        for ours, p in params.items():
            name, g = llama_name(ours).lower(), step_grads[ours]
            decay = 0.0 if any(word in name for word in ("norm", "ln", "bias")) else weight_decay
            per_head = any(word in name for word in ("k_proj", "q_proj", "wq", "wk", "query", "key"))
            if "bias" in name:  # Adam
                mean_square = g * g
            elif per_head:
                mean_square = (g * g).view(-1, head_numel).mean(dim=1, keepdim=True)
            elif any(word in name for word in per_row_names):  # one per row: token or output neuron
                mean_square = (g * g).mean(dim=1, keepdim=True)
            else:  # one for the tensor
                mean_square = (g * g).sum() / g.numel()
            v[ours] = beta2 * v[ours] + (1 - beta2) * mean_square
            p.mul_(1 - lr * decay)
            m[ours].lerp_(g, 1 - beta1)
            h = v[ours].sqrt() / math.sqrt(1 - beta2**step) + eps
            update = (m[ours].view(-1, head_numel) / h).view_as(p) if per_head and "bias" not in name else m[ours] / h
            p.sub_(lr / (1 - beta1**step) * update)
    return params


def scaled_gradients(model, steps):
    """Per step, a gradient for each parameter whose rows differ in scale, so that the partition matters."""
    generator = torch.Generator().manual_seed(2)
    return [
        {
            name: torch.randn(p.shape, generator=generator)
            * torch.randn(p.shape[0], generator=generator).exp().view(-1, *[1] * (p.ndim - 1))
            for name, p in model.named_parameters()
        }
        for _ in range(steps)
    ]


@pytest.mark.parametrize("value_blocks", ["row", "matrix"])
def test_adam_mini_is_its_authors_code_on_our_names(value_blocks):
    lr, betas, eps, weight_decay = 0.01, (0.9, 0.95), 1e-8, 0.1
    torch.manual_seed(0)
    model = GPT(ADAM_MINI_MODEL)
    named = dict(model.named_parameters())
    reference = {name: p.detach().clone() for name, p in named.items()}
    undecayed = [name for name, p in named.items() if p.ndim < 2]  # norms and biases (the scalar group)
    groups = [
        {"params": [named[n] for n in names], "param_names": names, "weight_decay": decay}
        for names, decay in ((undecayed, 0.0), ([n for n in named if n not in undecayed], weight_decay))
    ]
    optimizer = AdamMini(groups, lr=lr, betas=betas, eps=eps, n_head=ADAM_MINI_MODEL.n_head, value_blocks=value_blocks)
    grads = scaled_gradients(model, STEPS)
    for step_grads in grads:
        for name, p in named.items():
            p.grad = step_grads[name].clone()
        optimizer.step()
    dim, n_heads = ADAM_MINI_MODEL.d_model, ADAM_MINI_MODEL.n_head
    reference_adam_mini(reference, grads, lr, betas, eps, weight_decay, dim, n_heads, value_blocks == "matrix")
    for name, p in named.items():
        torch.testing.assert_close(p.detach(), reference[name], **FP32, msg=name)


def test_adam_mini_refuses_a_parameter_it_has_no_block_rule_for():
    model = torch.nn.Linear(4, 4)
    group = {"params": [model.weight], "param_names": ["blocks.0.router.weight"]}
    with pytest.raises(ValueError, match=r"no block rule for parameter 'blocks\.0\.router\.weight'"):
        AdamMini([group], n_head=1)


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
