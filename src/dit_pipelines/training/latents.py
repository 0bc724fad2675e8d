"""VAE latents for training: the posterior of each image or video frame, encoded once and cached or per batch, and
the latent sample x_0 ~ q(z | x) drawn from it at each step."""

from typing import Dict, Iterable, Tuple

import torch
from einops import rearrange

from ..latents import scale_latents


@torch.no_grad()
def encode_posteriors(vae, batches: Iterable[torch.Tensor], device, output_device="cpu") -> Dict[str, torch.Tensor]:
    """The VAE posterior N(mean, std²) of every image in `batches` of (n, C, H, W) pixels in [-1, 1], as
    {"mean", "std"} of (N, C_latent, h, w) in float32 on `output_device` (the CPU: what a latent cache stores)."""
    means, stds = [], []
    for pixels in batches:
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().to(output_device))
        stds.append(posterior.std.float().to(output_device))
    return {"mean": torch.cat(means), "std": torch.cat(stds)}


def sample_latents(mean: torch.Tensor, std: torch.Tensor, vae_config) -> torch.Tensor:
    """x_0 for a training step: a draw z = mean + std * eps of the posterior (global RNG, which checkpoints save),
    scaled to the diffusion model's space."""
    # randn in the logical order of the shape (randn_like would follow a permuted tensor's memory order, so that a
    # cached and a freshly encoded posterior of the same clip would draw different eps)
    eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
    return scale_latents(mean + std * eps, vae_config)


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


@torch.no_grad()
def clip_posteriors(vae, video: torch.Tensor, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior mean and std (B, C_latent, F, h, w), float32 on the VAE's device, of every frame of clips
    `video` (B, C, F, H, W) in [-1, 1], encoded `batch_size` frames at a time: what the latent cache stores of a
    clip, and what a step without the cache samples x_0 from (so that both draw the same x_0)."""
    frames = frames_first(video)
    batches = (frames[start : start + batch_size] for start in range(0, len(frames), batch_size))
    posterior = encode_posteriors(vae, batches, vae.device, output_device=vae.device)
    return clips_first(posterior["mean"], len(video)), clips_first(posterior["std"], len(video))
