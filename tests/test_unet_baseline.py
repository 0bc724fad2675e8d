"""The U-Net baseline (`ClassConditionalUNet`): diffusers' `UNet2DModel` itself, called as a DiT, counted as a DiT
is counted, learning with the same loss, and refusing what it cannot do."""

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

from dit_pipelines import ClassConditionalUNet, DiTDDPMScheduler, DiTImagePipeline
from dit_pipelines.models.flops import measured_flops, saved_config_gflops

from .conftest import hybrid_losses, randomize_


def tiny_unet(**overrides) -> ClassConditionalUNet:
    torch.manual_seed(0)
    config = dict(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(16, 32), layers_per_block=1)
    return ClassConditionalUNet.for_images(**{**config, **overrides}).eval()


def test_it_is_diffusers_unet_with_the_dits_arguments():
    unet = randomize_(tiny_unet(), std=0.05)
    plain = UNet2DModel.from_config(unet.config).eval()
    plain.load_state_dict(unet.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 700]), torch.tensor([2, 3])  # 3: the null class
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, y).sample, plain(x, t, class_labels=y).sample, rtol=0, atol=0)
    assert unet.config.num_class_embeds == 4 and unet.config.out_channels == 2  # the null class; learned sigma
    assert not tiny_unet(learn_sigma=False).learn_sigma
    assert list(unet.config.down_block_types) == ["DownBlock2D", "AttnDownBlock2D"]  # attention below full size


def test_gflops_count_as_the_dits_and_torch_sees_the_same_with_explicit_attention():
    unet = tiny_unet(block_out_channels=(16, 32, 32))
    x, t, y = torch.zeros(1, 1, 8, 8), torch.tensor([10]), torch.tensor([0])
    gflops = unet.gflops()
    assert gflops * 1e9 == measured_flops(unet, x, t, y)
    assert unet.gflops(16, 8) > 1.9 * gflops
    saved = {**unet.config, "_class_name": "ClassConditionalUNet"}  # as save_pretrained writes it
    assert saved_config_gflops(saved) == gflops  # the model card's route
    with pytest.raises(ValueError, match="Not a saved DiTModel or ClassConditionalUNet config"):
        saved_config_gflops(dict(unet.config))
    # With diffusers' AttnProcessor the attention products are explicit matrix products torch counts itself: the
    # counter's total (halved) plus the norms must then equal the hooks' count under the fused kernel.
    norms = []
    for norm in (m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)):
        norm.register_forward_hook(lambda m, args, out: norms.append((5 if m.affine else 4) * out.numel()))
    for attention in (m for m in unet.modules() if isinstance(m, Attention)):
        attention.set_processor(AttnProcessor())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, y)
    assert "aten.baddbmm" in {str(op) for op in counter.get_flop_counts()["Global"]}
    assert counter.get_total_flops() / 2 + sum(norms) == gflops * 1e9
    with pytest.raises(ValueError, match="needs the default attention backend"):  # counted twice otherwise
        unet.gflops()


def test_a_few_training_steps_lower_the_loss():
    first, last = hybrid_losses(tiny_unet(num_classes=2).train(), lr=2e-3)
    assert last < 0.8 * first


def test_what_a_unet_cannot_do_is_refused():
    with pytest.raises(ValueError, match="sample_size 28 must be divisible by 8 for 4 U-Net levels"):
        ClassConditionalUNet.for_images(28, 1, 10, block_out_channels=(8, 16, 16, 16))
    with pytest.raises(ValueError, match=r"widths \(16, 24\) must be multiples of attention_head_dim \(32\)"):
        ClassConditionalUNet.for_images(28, 1, 10, block_out_channels=(8, 16, 24))  # 0 heads at 16 otherwise
    pipe = DiTImagePipeline(tiny_unet(), DiTDDPMScheduler(timestep_respacing="4"))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="reuses transformer blocks; the U-Net has none"):
        pipe([0], cache_interval=2)
    with pytest.raises(ValueError, match=r"positive multiples of 2 \(VAE factor 1 x U-Net downsampling 2\), got 9x8"):
        pipe([0], height=9, width=8)
