"""Conventions between pixels, a VAE's latents and the diffusion model's inputs, shared by pipelines and training.

>>> import torch
>>> uint8_to_signed(torch.tensor([0, 255], dtype=torch.uint8))
tensor([-1.,  1.])
"""

import torch


def uint8_to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 (uint8 or float) -> floats in [-1, 1], the range DiT and the VAEs work in."""
    return pixels.float() / 127.5 - 1.0


def signed_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """The inverse of `uint8_to_signed`, rounded and clamped to uint8."""
    return ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def downsampling_factor(block_out_channels) -> int:
    """How much an `AutoencoderKL` with these encoder levels shrinks each side: 2 per level after the first."""
    return 2 ** (len(block_out_channels) - 1)


def vae_scale_factor(vae) -> int:
    """How much `vae` shrinks each side (`downsampling_factor` of its levels); 1 without a VAE."""
    return downsampling_factor(vae.config.block_out_channels) if vae is not None else 1


def scale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """VAE latents -> the diffusion model's space: (z - shift_factor) * scaling_factor (unit variance)."""
    return (latents - (getattr(vae_config, "shift_factor", None) or 0.0)) * vae_config.scaling_factor


def unscale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """The inverse of `scale_latents`, before decoding."""
    return latents / vae_config.scaling_factor + (getattr(vae_config, "shift_factor", None) or 0.0)
