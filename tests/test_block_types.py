"""The four block designs of DiT §3.2 (`DiTModel(block_type=...)`): shapes, adaLN-Zero's identity start, pipelines
that save and load, a few training steps that learn, and clear errors."""

import pytest
import torch
from diffusers import DiffusionPipeline

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel
from dit_pipelines.conversion import dit_to_diffusers
from dit_pipelines.models import BLOCK_TYPES

from .conftest import hybrid_losses, randomize_


def inputs(n: int = 2, channels: int = 4, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, size, size, generator=generator)
    return x, torch.tensor([10, 900][:n]), torch.tensor([3, 7][:n])


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_every_design_predicts_the_input_shape_and_its_variance(tiny_dit, block_type):
    model = tiny_dit(block_type=block_type)
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y).sample
    assert out.shape == (2, 8, 8, 8) and torch.isfinite(out).all()
    with torch.no_grad():  # the class matters (the conditioning reaches the output)
        assert not torch.equal(model(x, t, torch.tensor([1, 1])).sample, out)
    assert type(model.blocks[0]).__name__ in DiTModel._repeated_blocks


def test_adaln_zero_blocks_start_as_the_identity_and_adaln_blocks_do_not(tiny_dit):
    x, t, y = inputs()
    for block_type, identity in [("adaln_zero", True), ("adaln", False)]:
        model = tiny_dit(random=False, block_type=block_type)
        with torch.no_grad():
            assert torch.count_nonzero(model(x, t, y).sample) == 0  # the final layer starts at zero in both
            tokens = torch.randn(2, 16, 32)
            condition = model.condition(t, y)
            assert condition.shape == (2, 32)
            assert torch.equal(model.blocks[0](tokens, condition), tokens) is identity
    assert model.blocks[0].modulation.out_features == 4 * 32  # adaLN: shift and scale, no gates


def test_the_non_adaptive_designs_condition_through_the_sequence_t_c(tiny_dit):
    for block_type in ("cross_attention", "in_context"):
        model = tiny_dit(block_type=block_type)
        _, t, y = inputs()
        condition = model.condition(t, y)
        expected = torch.stack([model.timestep_embedder(t), model.class_embedder(y)], dim=1)
        torch.testing.assert_close(condition, expected, rtol=0, atol=0)
        assert not model.final_layer.adaptive and model.final_layer.modulation is None
    assert model.attention_identifiers()["cross"] == [r"^(decoder_)?blocks\.\d+\.cross_attn$"]


def test_in_context_tokens_are_dropped_after_the_last_block(tiny_dit):
    model = tiny_dit(block_type="in_context")
    x, t, y = inputs()
    seen = []
    model.blocks[-1].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    model.final_layer.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    with torch.no_grad():
        model(x, t, y)
    assert seen == [(2, 16 + 2, 32), (2, 16, 32)]  # 16 patch tokens and [t, c]; then the patches alone


@pytest.mark.parametrize("block_type", ["adaln", "cross_attention", "in_context"])
def test_a_saved_pipeline_loads_with_diffusers_and_samples_the_same(tmp_path, tiny_dit, block_type):
    pipe = DiTImagePipeline(tiny_dit(in_channels=3, block_type=block_type), DiTDDPMScheduler(timestep_respacing="3"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.config.block_type == block_type
    assert type(loaded.transformer.blocks[0]) is type(pipe.transformer.blocks[0])
    before = pipe([1, 2], generator=torch.manual_seed(0), output_type="np").images
    after = loaded([1, 2], generator=torch.manual_seed(0), output_type="np").images
    assert (before == after).all()


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_a_few_training_steps_lower_the_loss(block_type):
    torch.manual_seed(0)
    model = DiTModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=2,
        block_type=block_type,
    )  # fmt: skip
    first, last = hybrid_losses(model)
    assert last < 0.8 * first


def test_wrong_designs_are_refused_with_the_choices(tiny_dit):
    with pytest.raises(ValueError, match="Unknown block_type 'adaLN'; choose one of 'adaln_zero', 'adaln'"):
        DiTModel(sample_size=8, hidden_size=32, depth=1, num_heads=4, block_type="adaLN")
    with pytest.raises(ValueError, match="Context parallelism needs a block_type other than 'in_context'"):
        tiny_dit(block_type="in_context")._cp_plan
    assert tiny_dit(block_type="cross_attention")._cp_plan  # the split works for the others
    with pytest.raises(ValueError, match="adaLN-Zero blocks; this model's are 'adaln'"):
        dit_to_diffusers(randomize_(tiny_dit(block_type="adaln")))
