import pytest
import torch

from model import GPT, GPTConfig, build_model
from model.gpt import softcap
from train.config import compose_config


def preset(name: str, data: str = "shakespeare") -> dict:
    """A model preset as a run composes it: its vocabulary follows the data's tokenizer."""
    return compose_config([f"model={name}", f"data={data}"])["model"]


def meta_model(cfg: dict) -> GPT:
    with torch.device("meta"):
        return build_model(cfg)


def test_gpt124m_preset_has_the_optimization_track_parameter_count():
    model = meta_model(preset("gpt124m"))
    counts = {name: p.numel() for name, p in model.named_parameters()}
    assert sum(counts.values()) == 162_354_816
    assert counts["embed.weight"] == 38_633_472
    assert counts["lm_head.weight"] + counts["lm_head.bias"] == 38_683_776
    block0 = sum(n for name, n in counts.items() if name.startswith("blocks.0."))
    assert block0 == 7_086_336
    assert counts["embed_norm.weight"] + counts["final_norm.weight"] == 1_536


@pytest.mark.parametrize(
    "name, low, high",
    [("tiny", 1e6, 2e7), ("gpt350m", 3.5e8, 4.5e8), ("gpt1b", 1.0e9, 1.2e9)],
)
def test_presets_have_their_advertised_sizes(name, low, high):
    assert low <= meta_model(preset(name)).num_parameters() <= high


@pytest.mark.parametrize("data, vocab", [("shakespeare", 50304), ("shakespeare_bytes", 320), ("fineweb10b", 50304)])
def test_every_preset_takes_its_vocabulary_from_the_datas_tokenizer(data, vocab):
    for name in ("tiny", "gpt124m", "gpt350m", "gpt1b"):
        assert preset(name, data)["vocab_size"] == vocab


def test_mlp_up_projection_is_tall_and_down_projection_wide():
    cfg = preset("tiny") | {"mlp_expansion": 8}
    model = meta_model(cfg)
    up, down = model.blocks[0].mlp.up.weight, model.blocks[0].mlp.down.weight
    assert up.shape == (8 * cfg["d_model"], cfg["d_model"])
    assert down.shape == (cfg["d_model"], 8 * cfg["d_model"])


def test_fractional_expansion_rounds_hidden_width():
    assert GPTConfig(d_model=128, mlp_expansion=2.5).mlp_hidden == 320


def small_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=256, n_layer=2, n_head=2, head_dim=16, d_model=32)
    return GPTConfig(**(base | overrides))


@pytest.mark.parametrize("activation", ["relu2", "swiglu", "gelu"])
def test_every_activation_gives_finite_loss_and_gradients(activation):
    torch.manual_seed(0)
    model = GPT(small_config(activation=activation, bias=True))
    idx = torch.randint(0, 256, (2, 12))
    loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert hasattr(model.blocks[0].mlp, "gate") == (activation == "swiglu")


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(small_config())
    with torch.no_grad():  # non-zero residual projections so every layer matters
        for block in model.blocks:
            block.attn.out.weight.normal_(0, 0.1)
            block.mlp.down.weight.normal_(0, 0.1)
    idx = torch.randint(0, 256, (1, 10))
    changed = idx.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 256
    assert torch.equal(model(idx)[:, :6], model(changed)[:, :6])
    assert not torch.allclose(model(idx)[:, 6:], model(changed)[:, 6:])


def test_residual_projections_start_at_zero_so_blocks_start_as_identity():
    model = GPT(small_config())
    for block in model.blocks:
        assert not block.attn.out.weight.any() and not block.mlp.down.weight.any()


def test_logit_softcap_bounds_logits():
    torch.manual_seed(0)
    model = GPT(small_config(logit_softcap=2.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    logits = model(torch.randint(0, 256, (1, 8)))
    assert logits.abs().max() < 2.0


def test_unknown_model_key_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="n_layers"):
        build_model({"n_layers": 3})


def test_invalid_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="tanh")


def test_softcap_matches_its_formula_and_gradient():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True) * 30
    assert torch.allclose(softcap(x, 15.0), 15.0 * x / torch.sqrt(x * x + 225.0))
    assert torch.autograd.gradcheck(lambda t: softcap(t, 15.0), (x.detach().requires_grad_(),))
