"""`DiTModel.gflops()`: the DiT paper's Table 4 for the 12 presets, and, for every block design, torch's
`FlopCounterMode` count of a real forward plus what it cannot see (the fused attention kernel, layer norms),
measured here with hooks on the attention and LayerNorm modules."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_pipelines import DIT_PRESETS, DiTModel
from dit_pipelines.models import BLOCK_TYPES
from dit_pipelines.models.attention import CrossAttention, SelfAttention
from dit_pipelines.models.flops import saved_config_gflops

# Peebles & Xie (2023), Table 4: forward Gflops at 256x256 (32x32x4 latents)
TABLE_4 = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}  # fmt: skip


def preset_gflops(name: str, **overrides) -> float:
    """Gflops of a preset without building its weights: the count reads the config alone."""
    config = {**DIT_PRESETS[name], "sample_size": 32, "in_channels": 4, "_class_name": "DiTModel", **overrides}
    return saved_config_gflops(config)


def test_the_twelve_presets_give_the_papers_table_4():
    assert set(TABLE_4) == set(DIT_PRESETS)
    for name, paper in TABLE_4.items():
        assert preset_gflops(name) == pytest.approx(paper, rel=5e-3), name


def test_a_built_model_counts_as_its_saved_config():
    model = DiTModel.from_preset("DiT-S/8", sample_size=32)
    assert model.gflops() == preset_gflops("DiT-S/8")
    assert model.gflops(64, 32) > 1.9 * model.gflops()  # twice the tokens: more than twice the attention


def test_cross_attention_costs_about_15_percent_more_at_xl_2():
    ratio = preset_gflops("DiT-XL/2", block_type="cross_attention") / preset_gflops("DiT-XL/2")
    assert 1.13 < ratio < 1.18  # the paper: "roughly 15%"


def measured_macs(model: DiTModel, height: int, width: int) -> float:
    """Multiply-accumulates of one forward on one image: FlopCounterMode's count (2 per MAC) of every matmul and
    convolution, plus the attention products QKᵀ and AV of each attention call (2·T·S·D, which the fused CPU kernel
    hides from the counter) and fvcore's 4 (5 with affine) per element of each LayerNorm input."""
    extra = []

    def attention_hook(module, args, output):
        queries = args[0]
        keys = args[1] if isinstance(module, CrossAttention) else queries
        extra.append(2 * queries.shape[1] * keys.shape[1] * queries.shape[2])

    def norm_hook(module, args, output):
        extra.append((5 if module.elementwise_affine else 4) * args[0][0].numel())

    handles = [
        m.register_forward_hook(attention_hook if isinstance(m, (SelfAttention, CrossAttention)) else norm_hook)
        for m in model.modules()
        if isinstance(m, (SelfAttention, CrossAttention, torch.nn.LayerNorm))
    ]
    x = torch.randn(1, model.config.in_channels, height, width)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([10]), torch.tensor([1]))
    for handle in handles:
        handle.remove()
    assert extra, "the hooks saw nothing"
    return counter.get_total_flops() / 2 + sum(extra)


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_gflops_equal_a_counted_forward(block_type, learn_sigma):
    torch.manual_seed(0)
    model = DiTModel(
        sample_size=16, patch_size=4, in_channels=3, hidden_size=48, depth=3, num_heads=4, num_classes=5,
        mlp_ratio=3.0, learn_sigma=learn_sigma, block_type=block_type,
    ).eval()  # fmt: skip
    for height, width in [(16, 16), (8, 24)]:
        assert model.gflops(height, width) * 1e9 == pytest.approx(measured_macs(model, height, width), rel=1e-12)


def test_a_grid_the_patches_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="must be divisible by the patch size 8"):
        DiTModel.from_preset("DiT-S/8", sample_size=32).gflops(36, 32)
