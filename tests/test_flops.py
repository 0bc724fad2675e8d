"""`DiTModel.gflops()`: the DiT paper's Table 4 for the 12 presets; for every block design, a measured forward
(`measured_flops`: torch's `FlopCounterMode` plus hooks on the attention and norm modules), and each part of the
count as torch sees it on its own (the attention products under the `_native_math` backend)."""

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from torch.utils.flop_counter import FlopCounterMode

from dit_pipelines import DIT_PRESETS, DiTModel
from dit_pipelines.models import BLOCK_TYPES
from dit_pipelines.models.flops import dit_flops, measured_flops, saved_config_gflops

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


def tiny_model(**overrides) -> DiTModel:
    torch.manual_seed(0)
    config = dict(sample_size=16, patch_size=4, in_channels=3, hidden_size=48, depth=3, num_heads=4, num_classes=5)
    return DiTModel(**{**config, "mlp_ratio": 3.0, **overrides}).eval()


def forward_inputs(model: DiTModel, height: int, width: int):
    return torch.randn(1, model.config.in_channels, height, width), torch.tensor([10]), torch.tensor([1])


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_gflops_equal_a_measured_forward(block_type, learn_sigma):
    model = tiny_model(learn_sigma=learn_sigma, block_type=block_type)
    for height, width in [(16, 16), (8, 24)]:
        inputs = forward_inputs(model, height, width)
        assert model.gflops(height, width) * 1e9 == pytest.approx(measured_flops(model, *inputs), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Attention backends are an experimental feature")
@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_the_counts_torch_sees_without_hooks(block_type, monkeypatch):
    """The parts of the count by torch's own `FlopCounterMode` (2 per multiply-accumulate): the linear layers under
    the default fused attention, the attention products too under diffusers' `_native_math` backend (explicit
    matrix products); the layer norms by their input sizes."""
    model = tiny_model(block_type=block_type)
    expected = dit_flops(model.config, 8, 24)
    inputs = forward_inputs(model, 8, 24)

    def counted():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
        return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}

    fused = counted()
    assert (fused["aten.addmm"] + fused["aten.convolution"]) / 2 == expected.linear and "aten.bmm" not in fused
    # set_attention_backend also sets diffusers' process-wide active backend: restored after the test
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    model.set_attention_backend("_native_math")
    try:
        assert counted()["aten.bmm"] / 2 == expected.attention
        with pytest.raises(ValueError, match="needs the default attention backend"):
            measured_flops(model, *inputs)
    finally:
        model.reset_attention_backend()
    sizes = []
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)):
        norm.register_forward_hook(lambda m, args, out: sizes.append((5 if m.elementwise_affine else 4) * out.numel()))
    model(*inputs)
    assert sum(sizes) == expected.norm


def test_a_grid_the_patches_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="must be divisible by the patch size 8"):
        DiTModel.from_preset("DiT-S/8", sample_size=32).gflops(36, 32)
