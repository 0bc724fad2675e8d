"""VAE latents for training: the posterior of each image or video frame, encoded once and cached or per batch, and
the latent sample x_0 ~ q(z | x) drawn from it at each step."""

from typing import Dict, Iterable

import torch
from einops import rearrange

from ..latents import scale_latents, uint8_to_signed


@torch.no_grad()
def encode_posteriors(vae, batches: Iterable[torch.Tensor], device) -> Dict[str, torch.Tensor]:
    """The VAE posterior N(mean, std²) of every image in `batches` of (n, C, H, W) pixels in [-1, 1], as
    {"mean", "std"} of (N, C_latent, h, w) on the CPU in float32: what a latent cache stores."""
    means, stds = [], []
    for pixels in batches:
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return {"mean": torch.cat(means), "std": torch.cat(stds)}


def sample_latents(mean: torch.Tensor, std: torch.Tensor, vae_config) -> torch.Tensor:
    """x_0 for a training step: a draw z = mean + std * eps of the posterior (global RNG, which checkpoints save),
    scaled to the diffusion model's space."""
    return scale_latents(mean + std * torch.randn_like(mean), vae_config)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """x_0 for a training step from pixels (N, C, H, W) in [-1, 1], encoded now: `sample_latents` of the posterior."""
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    return sample_latents(posterior.mean.float(), posterior.std.float(), vae.config)


def frames_first(video: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) clips -> (B·F, C, H, W) frames, for a per-frame image VAE."""
    return rearrange(video, "b c f h w -> (b f) c h w")


def clips_first(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """The inverse of `frames_first`: (B·F, C, h, w) -> (B, C, F, h, w)."""
    return rearrange(frames, "(b f) c h w -> b c f h w", b=batch)


def encode_clip_posteriors(vae, video: torch.Tensor, device, batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """The latent cache of uint8 clips (N, C, F, H, W): posterior mean and std (N, C_latent, F, h, w) of every frame,
    encoded `batch_size` frames at a time."""
    frames = frames_first(video)
    batches = (uint8_to_signed(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size))
    return {key: clips_first(value, len(video)) for key, value in encode_posteriors(vae, batches, device).items()}
