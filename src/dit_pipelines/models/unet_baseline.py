"""`ClassConditionalUNet`: diffusers' `UNet2DModel` as the DiT pipelines and training script call a denoiser — the
U-Net baseline that DiT replaces (ADM, Dhariwal & Nichol 2021), trained with the same scheduler, hybrid loss and
loop (`train_dit.py --architecture unet`) and sampled through the same pipeline.

It is `UNet2DModel` itself (same config, same weights, saved and loaded as one): the class label goes through the
U-Net's class embedding (`num_class_embeds` = classes + 1, the last one the null class of classifier-free guidance),
learned sigma doubles `out_channels`, and `forward` takes DiTModel's arguments. What a DiT keeps in its config
(`num_classes`, `learn_sigma`, `has_null_class`) are properties here, read from the U-Net's own config.

>>> import torch
>>> unet = ClassConditionalUNet.for_images(sample_size=8, in_channels=1, num_classes=3, block_out_channels=(32, 64))
>>> unet.num_classes, unet.learn_sigma, unet.input_multiple
(3, True, 2)
>>> unet(torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 3])).sample.shape  # 3: the null class
torch.Size([2, 2, 8, 8])
"""

from typing import Optional, Sequence

import torch
from diffusers import UNet2DModel

from .flops import measured_flops


def unet_input_multiple(levels: int) -> int:
    """What input heights and widths a U-Net of `levels` levels needs them to be multiples of: 2 for each
    downsampling (every level but the last)."""
    return 2 ** (levels - 1)


class ClassConditionalUNet(UNet2DModel):
    """diffusers' `UNet2DModel`, class-conditional, with learned sigma, called as a `DiTModel`; build one with
    `for_images`."""

    @classmethod
    def for_images(
        cls,
        sample_size: int,
        in_channels: int,
        num_classes: int,
        learn_sigma: bool = True,
        block_out_channels: Sequence[int] = (128, 256, 256),
        layers_per_block: int = 2,
        attention_head_dim: int = 32,
        norm_num_groups: Optional[int] = None,
    ) -> "ClassConditionalUNet":
        """An ADM-style U-Net for `sample_size` inputs: one level per entry of `block_out_channels` (each but the
        last halving the resolution), self-attention at every level but the first and in the middle block, as ADM
        attends at the lower resolutions only; `norm_num_groups` defaults to 32, or fewer where the widths ask."""
        levels = len(block_out_channels)
        multiple = unet_input_multiple(levels)
        if sample_size % multiple:
            raise ValueError(
                f"sample_size {sample_size} must be divisible by {multiple} for {levels} U-Net levels "
                f"(block_out_channels={tuple(block_out_channels)}); use fewer levels."
            )
        attended = tuple(block_out_channels[1:]) or tuple(block_out_channels)  # the levels with attention, the middle
        if any(c % attention_head_dim for c in attended):
            raise ValueError(
                f"The attended levels' widths {attended} must be multiples of attention_head_dim "
                f"({attention_head_dim}): diffusers gives a level width // attention_head_dim heads."
            )
        groups = norm_num_groups or next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in block_out_channels))
        return cls(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=2 * in_channels if learn_sigma else in_channels,
            down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1),
            up_block_types=("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=groups,
            num_class_embeds=num_classes + 1,  # the last one: the null class
        )

    @property
    def num_classes(self) -> int:
        """The classes, the null class not counted."""
        return self.config.num_class_embeds - 1

    @property
    def has_null_class(self) -> bool:
        return True

    @property
    def learn_sigma(self) -> bool:
        return self.config.out_channels == 2 * self.config.in_channels

    @property
    def input_multiple(self) -> int:
        """What heights and widths must be multiples of: 2 for each downsampling."""
        return unet_input_multiple(len(self.config.block_out_channels))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep,
        class_labels: torch.Tensor,
        return_dict: bool = True,
        feature_cache=None,
    ):
        """`UNet2DModel.forward` with DiTModel's arguments: noisy inputs (N, C, H, W), timesteps, class labels (N,)
        (`num_classes` is the null class)."""
        if feature_cache is not None:
            raise ValueError("Feature caching (cache_interval) reuses transformer blocks; the U-Net has none.")
        return super().forward(hidden_states, timestep, class_labels=class_labels, return_dict=return_dict)

    def gflops(self, height: Optional[int] = None, width: Optional[int] = None) -> float:
        """Forward Gflops per image counted as `DiTModel.gflops` counts (multiply-accumulates of convolutions,
        linear layers and attention products, norms at 4-5 per element), measured on one forward
        (`models.flops.measured_flops`): a U-Net has no short closed form."""
        size = self.config.sample_size
        x = torch.zeros(1, self.config.in_channels, height or size, width or size, device=self.device)
        label = torch.tensor([0], device=self.device)
        return measured_flops(self, x, torch.tensor([10], device=self.device), label) / 1e9
