"""Optimizer step time on the gpt124m parameter set, and quality against cost of each polar method.

    python scripts/bench_optim.py                  # both parts; CPU, and CUDA too when present
    python scripts/bench_optim.py --part quality   # only the quality table
    python scripts/bench_optim.py --repeats 5      # more timed steps per optimizer
    python scripts/bench_optim.py --part steps --cases "aurora tall K=2" "aurora recycling" --repeats 5 --cpu-warm-up
    python scripts/bench_optim.py --part steps --shape tiny_x16 --cases "aurora tall K=2" "aurora recycling" \
        --repeats 30 --cpu-warm-up
    python scripts/bench_optim.py --part steps --cases muon "aurora tall K=2" --ns-dtype bfloat16   # the polar in bf16
    python scripts/bench_optim.py --part steps --shape tiny_x16 --cases muon "aurora tall K=2" dion \
        --repeats 20 --cpu-warm-up

Step time: one optimizer.step() over the optimization-track model's parameters (12 blocks of
q, k, v, out 768×768, up 3072×768, down 768×3072, biases and gains; embedding and head
50304×768), or with --shape tiny_x16 the byte-level tiny GPT's at MLP ×16 (4 blocks, d 128,
up 2048×128, vocabulary 320), with random gradients; the fastest of --repeats timed steps, the
optimizers' steps interleaved round by round (every optimizer's state is held at once). CUDA warms
up with one untimed step; CPU by default does not (a CPU step takes 2-60 s), so its first step also
allocates the optimizer state.
--ns-dtype sets every matrix optimizer's polar dtype (default: the configs' own, auto: fp32 on a
CPU, bf16 on CUDA).
Quality: row-norm CV, ‖UᵀU − I‖₂ and ⟨G, U⟩/‖G‖_* of every method on one synthetic 3072×768
gradient with log-normal row scales (σ = 1.2), and the fastest time of one call; then how far one
Muon and one Aurora update in bf16 lie from the same update in fp32, and the fp32 polar's direct
and Gram forms timed on MLP-shaped stacks.
Leverage (CPU): the row-norm CV of vanilla Aurora against exact leverage (optim=aurora_leverage)
on that gradient, on 1024×256 matrices whose spectrum decays to 1e-2 ... 1e-8 (where the NS
polar and exact leverage differ), and with --momenta on the tall momentum matrices of checkpoints:

    python scripts/bench_optim.py --part leverage --momenta runs/long_bytes/aurora_leverage-x16-seed0/checkpoints/step_*
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optim import build_optimizer
from optim.aurora import aurora_polar, aurora_polar_with_state, riemannian_aurora_polar
from optim.polar import NS_DTYPES, newton_schulz, ns_coefficients, polar
from train.config import compose_config
from train.rundir import describe_hardware, hardware

SHAPES = {"gpt124m": {}, "tiny_x16": {"vocab": 320, "d": 128, "hidden": 2048, "layers": 4}}

# (label, config file, matrix overrides)
STEP_CASES = [
    ("adamw", "adamw", {}),
    ("muon", "muon", {}),
    ("normuon", "normuon", {}),
    ("unormuon", "unormuon", {}),
    ("aurora tall K=2", "aurora", {}),
    ("aurora floored K=2", "aurora", {"pp_row_floor": 0.1}),
    ("aurora recycling K=2", "aurora", {"recycle_after": 20, "recycle_below": 0.01}),  # conf/optim/aurora_recycle.yaml
    ("aurora tall K=1 warm", "aurora", {"pp_iterations": 1, "pp_warm_start": True}),
    ("aurora leverage K=3", "aurora", {"pp_leverage": "exact", "pp_iterations": 3}),  # conf/optim/aurora_leverage.yaml
    ("aurora rectangular K=2", "aurora", {"apply_to": "rectangular"}),
    ("riemannian_aurora tall", "riemannian_aurora", {}),
    ("dion r=1/2", "dion", {}),  # conf/optim/dion.yaml: rank_fraction 0.5
    ("dion r=1/4", "dion", {"rank_fraction": 0.25}),
    ("dion full rank", "dion", {"rank_fraction": 1.0}),
]


class GptParameters(nn.Module):
    """A GPT's parameters under model/gpt.py's names (no forward); the optimization track's by default."""

    def __init__(self, vocab=50304, d=768, hidden=3072, layers=12):
        super().__init__()

        def linear(rows, cols):  # nn.Linear's weight is (out, in) = (rows, cols)
            return nn.Linear(cols, rows)

        def gain():
            module = nn.Module()
            module.weight = nn.Parameter(torch.ones(d))
            return module

        self.embed = nn.Embedding(vocab, d)
        self.embed_norm = gain()
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.attn_norm, block.mlp_norm = gain(), gain()
            block.attn = nn.Module()
            block.attn.q, block.attn.k, block.attn.v, block.attn.out = (linear(d, d) for _ in range(4))
            block.mlp = nn.Module()
            block.mlp.up, block.mlp.down = linear(hidden, d), linear(d, hidden)
            self.blocks.append(block)
        self.final_norm = gain()
        self.lm_head = linear(vocab, d)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps_side_by_side(optimizers: dict, model, device, repeats, warm_up) -> dict[str, list[float]]:
    """{label: step times} of every optimizer, their steps interleaved round by round, so that
    a change of the machine's load or clock hits every optimizer of a round alike."""
    generator = torch.Generator(device=device).manual_seed(0)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, device=device, generator=generator)
    if warm_up:
        for optimizer in optimizers.values():
            optimizer.step()  # allocates the state, initialises kernels
    times = {label: [] for label in optimizers}
    for _ in range(repeats):
        for label, optimizer in optimizers.items():
            times[label].append(best_time(optimizer.step, device, 1))
    return times


def best_time(fn, device, repeats):
    """Fastest of `repeats` calls: on a shared machine, other load only ever adds time."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def step_time_table(device, repeats, warm_up, cases=None, shape="gpt124m", ns_dtype=None):
    model = GptParameters(**SHAPES[shape]).to(device)
    count = sum(p.numel() for p in model.parameters())
    after = "after a warm-up step" if warm_up else "first steps, state allocation included"
    precision = f", polar in {ns_dtype}" if ns_dtype else ""
    print(f"\n## Optimizer step time, {shape} parameter set ({count:,} parameters), {device}{precision}")
    print(f"best of {repeats}, {after}, the optimizers' steps interleaved\n")
    if cases is None:
        chosen, reference = STEP_CASES, "muon"
    else:  # in the order given, the first the reference: the timing the others are read against
        by_label = {case[0]: case for prefix in cases for case in STEP_CASES if case[0].startswith(prefix)}
        chosen = list(by_label.values())
        reference = chosen[0][0]
    print(f"| optimizer | fastest step (s) | / {reference} (median over rounds) |")
    print("|---|---|---|")
    optimizers = {}
    for label, config, overrides in chosen:
        cfg = OmegaConf.create(compose_config([f"optim={config}"])["optim"])
        polar_dtype = {"ns_dtype": ns_dtype} if ns_dtype and "ns_dtype" in cfg.matrix else {}  # adamw, dion: no polar
        for key, value in {**overrides, **polar_dtype}.items():
            cfg.matrix[key] = value
        optimizers[label] = build_optimizer(cfg, model)
    times = time_steps_side_by_side(optimizers, model, device, repeats, warm_up)
    results = {label: min(found) for label, found in times.items()}
    for label in optimizers:
        # the ratio within each round, then its median: robust to load that changes between rounds
        ratio = statistics.median(t / r for t, r in zip(times[label], times[reference]))
        print(f"| {label} | {results[label]:.3f} | {ratio:.3f} |", flush=True)
    return results


def row_scaled_gradient(m=3072, n=768, sigma=1.2, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    row_scales = torch.exp(sigma * torch.randn(m, 1, generator=generator))
    return (row_scales * torch.randn(m, n, generator=generator)).to(device), row_scales.to(device)


def warm_started_aurora(G, row_scales, steps=10, momentum=0.95):
    """K=1 Aurora carried across `steps` momentum steps of fresh gradients with the same row
    scales (as in training), returned at the last step on that step's momentum."""
    M, correction = torch.zeros_like(G), None
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        fresh = row_scales * torch.randn(G.shape, generator=generator).to(G.device)
        M = M.lerp(fresh, 1 - momentum)
        U, correction = aurora_polar_with_state(M, correction, iterations=1)
    return M, U


def direct_polar(G):
    """polar(G) in fp32 by the direct iteration, which polar() leaves for the Gram form on a tall G."""
    wide = (G.mT / G.norm(dim=(-2, -1), keepdim=True)).contiguous().reshape(-1, *G.shape[-2:][::-1])
    return newton_schulz(wide, ns_coefficients("simple_quintic")).mT.reshape(G.shape)


def forms_table(G, device, repeats):
    """The fp32 polar's two forms side by side on stacks of 4 MLP-shaped matrices, then how far each
    (and the direct form in bf16) lies from the float64 iteration on G."""
    print(f"\n## fp32 polar (simple_quintic 12), direct against Gram form, stacks of 4, {device}\n")
    print("| matrices | direct (ms) | Gram (ms) | direct / Gram |")
    print("|---|---|---|---|")
    for rows, cols in ((1024, 128), (2048, 128), (3072, 768)):
        stack = torch.randn(4, rows, cols, device=device)
        direct = best_time(lambda stack=stack: direct_polar(stack), device, max(repeats, 2))
        gram = best_time(lambda stack=stack: polar(stack, dtype=torch.float32), device, max(repeats, 2))
        print(f"| 4 × {rows}×{cols} | {1000 * direct:.0f} | {1000 * gram:.0f} | {direct / gram:.2f} |", flush=True)
    exact = polar(G.double(), dtype=torch.float64)
    print(f"\nSpectral-norm distance from the float64 iteration, the {G.shape[0]}x{G.shape[1]} input above:\n")
    print("| polar | ‖U − U_float64‖₂ |")
    print("|---|---|")
    for label, U in (
        ("fp32, Gram form", polar(G, dtype=torch.float32)),
        ("fp32, direct form", direct_polar(G)),
        ("bf16, direct form", polar(G, dtype=torch.bfloat16)),
    ):
        print(f"| {label} | {torch.linalg.matrix_norm(U.double() - exact, ord=2).item():.2e} |", flush=True)


def quality_table(device, repeats):
    G, row_scales = row_scaled_gradient(device=device)
    cases = [
        ("polar simple_quintic 12 bf16", lambda g: polar(g, dtype=torch.bfloat16)),
        ("polar simple_quintic 12 fp32 (Gram form)", lambda g: polar(g, dtype=torch.float32)),
        ("polar simple_quintic 12 fp32, direct form", direct_polar),
        ("polar quintic 5 bf16", lambda g: polar(g, "quintic", dtype=torch.bfloat16)),
        ("polar polar_express 5 bf16", lambda g: polar(g, "polar_express", dtype=torch.bfloat16)),
        ("aurora K=1 (row-normalise, polar)", lambda g: aurora_polar(g, iterations=1)),
        ("aurora K=2 beta=0.5 (default)", lambda g: aurora_polar(g)),
        ("aurora K=3 beta=0.5", lambda g: aurora_polar(g, iterations=3)),
        ("aurora K=3 beta=0.25", lambda g: aurora_polar(g, iterations=3, beta=0.25)),
        ("aurora K=2 polar_express 5", lambda g: aurora_polar(g, polar_method="polar_express")),
        ("aurora K=2 exact leverage", lambda g: aurora_polar(g, leverage="exact")),
        ("aurora K=3 exact leverage (aurora_leverage)", lambda g: aurora_polar(g, iterations=3, leverage="exact")),
        ("riemannian 3 outer (default)", lambda g: riemannian_aurora_polar(g)),
    ]
    title = f"Quality against cost: 3072x768, log-normal row scales sigma=1.2, {device} (aurora rows: polar in auto)"
    print(f"\n## {title}\n")
    print("| method | row-norm CV | ‖UᵀU−I‖₂ | ⟨G,U⟩/‖G‖_* | time (ms) |")
    print("|---|---|---|---|---|")
    for label, method in cases:
        U = method(G)  # also the warm-up
        print_quality_row(label, G, U, best_time(lambda method=method: method(G), device, repeats))
    M, U = warm_started_aurora(G, row_scales)
    print_quality_row("aurora K=1 warm start, step 10 of a momentum run", M, U, None)
    print_quality_row("aurora K=1 cold, same momentum", M, aurora_polar(M, iterations=1), None)
    print_quality_row("aurora K=2 cold, same momentum", M, aurora_polar(M), None)
    precision_table(G)
    forms_table(G, device, repeats)


def spectrum_decaying_to(smallest, m=1024, n=256, sigma=1.2, seed=0):
    """An m×n matrix with log-spaced singular values from 1 to `smallest` (float64 factors), then
    log-normal row scales (σ = sigma): an ill-conditioned momentum."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    singular_values = torch.logspace(0, math.log10(smallest), n, dtype=torch.float64)
    row_scales = torch.exp(sigma * torch.randn(m, 1, generator=generator, dtype=torch.float64))
    return (row_scales * (left * singular_values) @ right.T).float()


def checkpoint_momenta(checkpoint: Path) -> list[tuple[str, torch.Tensor]]:
    """(name, momentum) of every tall matrix in a training checkpoint (a step_XXXXXXX directory)."""
    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(checkpoint, Path(scratch) / "state.pt")
        state = torch.load(Path(scratch) / "state.pt", weights_only=True)["optimizer"]["state"]
    momenta = ((name, entry.get("momentum_buffer")) for name, entry in state.items())
    return [(name, M) for name, M in momenta if M is not None and M.ndim == 2 and M.shape[0] > M.shape[1]]


def leverage_table(checkpoints=()):
    """Row-norm CV of vanilla Aurora (its inner polar gives the row norms) against exact leverage,
    on the quality input, on ever worse conditioned ones and on the tall momentum matrices of
    training checkpoints, polar in bf16 and in fp32."""
    G, _ = row_scaled_gradient()
    inputs = [("3072x768, sigma=1.2 (the quality input)", G)]
    inputs += [(f"1024x256, spectrum 1 to {s:g}", spectrum_decaying_to(s)) for s in (1e-2, 1e-4, 1e-6, 1e-8)]
    for checkpoint in checkpoints:
        run = f"{Path(checkpoint).parent.parent.name} {Path(checkpoint).name}"  # <run>/checkpoints/step_XXXXXXX
        inputs += [(f"{run} {name}", M) for name, M in checkpoint_momenta(Path(checkpoint))]
    rules = [
        ("vanilla K=2", {}),
        ("exact K=2", {"leverage": "exact"}),
        ("exact K=3 (aurora_leverage)", {"leverage": "exact", "iterations": 3}),
    ]
    print("\n## Row-norm CV: exact leverage against the inner polar's row norms, polar in bf16 / fp32\n")
    print(f"| input | {' | '.join(label for label, _ in rules)} |")
    print(f"|---|{'---|' * len(rules)}")
    for name, X in inputs:
        cells = [
            " / ".join(f"{row_norm_cv(aurora_polar(X, dtype=d, **rule)):.4f}" for d in (torch.bfloat16, torch.float32))
            for _, rule in rules
        ]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


def row_norm_cv(U):
    norms = U.double().norm(dim=-1)
    return (norms.std() / norms.mean()).item()


def precision_table(G):
    """How far one update with the polar in bf16 (the reference, on GPUs) lies from fp32 (ours on CPUs)."""
    print("\n## One update, polar in bf16 against fp32: the same 3072x768 input\n")
    print("| update | ‖U_bf16 − U_fp32‖_F / ‖U_fp32‖_F | max relative row-norm difference | cosine |")
    print("|---|---|---|---|")
    for label, method in (("muon (simple_quintic 12)", polar), ("aurora K=2", aurora_polar)):
        low, high = method(G, dtype=torch.bfloat16).double(), method(G, dtype=torch.float32).double()
        distance = ((low - high).norm() / high.norm()).item()
        rows = ((low.norm(dim=1) - high.norm(dim=1)).abs() / high.norm(dim=1)).max().item()
        cosine = ((low * high).sum() / (low.norm() * high.norm())).item()
        print(f"| {label} | {distance:.4f} | {rows:.4f} | {cosine:.6f} |", flush=True)


def print_quality_row(label, G, U, seconds):
    G, U = G.double(), U.double()
    cv = row_norm_cv(U)
    identity = torch.eye(U.shape[1], dtype=torch.float64, device=U.device)
    orthogonality = torch.linalg.matrix_norm(U.mT @ U - identity, ord=2).item()
    alignment = ((G * U).sum() / torch.linalg.matrix_norm(G, ord="nuc")).item()
    cost = "-" if seconds is None else f"{1000 * seconds:.0f}"
    print(f"| {label} | {cv:.4f} | {orthogonality:.4f} | {alignment:.4f} | {cost} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "steps", "quality", "leverage"), default="all")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: 1 on CPU, 10 on CUDA)")
    parser.add_argument(
        "--cpu-warm-up", action="store_true", help="an untimed step first on CPU too (CUDA always has one)"
    )
    parser.add_argument(
        "--shape", choices=tuple(SHAPES), default="gpt124m", help="the parameter set the step-time part times"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        help="only the step-time cases whose label starts with one of these (the first is the reference)",
    )
    parser.add_argument(
        "--ns-dtype", choices=NS_DTYPES, help="every matrix optimizer's polar dtype (default: the configs')"
    )
    parser.add_argument(
        "--momenta",
        nargs="+",
        default=(),
        metavar="CHECKPOINT",
        help="leverage part: also these checkpoints' tall momenta",
    )
    args = parser.parse_args(argv)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"{describe_hardware(hardware())}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        on_cpu = device.type == "cpu"
        repeats = args.repeats or (1 if on_cpu else 10)
        if args.part in ("all", "steps"):
            step_time_table(device, repeats, args.cpu_warm_up or not on_cpu, args.cases, args.shape, args.ns_dtype)
        if args.part in ("all", "quality"):
            quality_table(device, repeats)
    if args.part in ("all", "leverage"):
        leverage_table(args.momenta)


if __name__ == "__main__":
    main()
