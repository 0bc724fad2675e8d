"""What the image and video pipelines (and the scripts that train them) share: classifier-free guidance, how they
call a scheduler, the VAE's latent conventions, and the layout of a saved pipeline."""

import inspect
import os
from typing import Optional

import torch

# Schedulers whose `step` samples with a learned variance from 2C-channel outputs; the others get the C prediction
# channels. (diffusers' DPM-Solvers with variance_type="learned_range" keep the first 3 channels of any output, for
# pixel-space models: use them with the default variance_type on 4-channel latents.)
VARIANCE_SCHEDULERS = ("DiTDDPMScheduler", "DDPMScheduler", "DDPMParallelScheduler")


class GuidedSamplingState:
    """The state of the current call that diffusers' step-end callbacks read and change, as in diffusers' own
    pipelines: `pipe.guidance_scale`, `pipe.num_timesteps`, and `pipe._interrupt = True` to stop after a step."""

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the current call (callbacks may change `pipe._guidance_scale`)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps


def vae_scale_factor(vae) -> int:
    """How much the `AutoencoderKL` shrinks each side (2 per level after the first); 1 without a VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


def scale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """VAE latents -> the diffusion model's space: (z - shift_factor) * scaling_factor (unit variance)."""
    return (latents - (getattr(vae_config, "shift_factor", None) or 0.0)) * vae_config.scaling_factor


def unscale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """The inverse of `scale_latents`, before decoding."""
    return latents / vae_config.scaling_factor + (getattr(vae_config, "shift_factor", None) or 0.0)


def transformer_folder(path: str) -> str:
    """The model folder of a saved pipeline (its transformer/), or `path` itself for a saved model."""
    folder = os.path.join(path, "transformer")
    return folder if os.path.isdir(folder) else path


def uses_learned_variance(scheduler) -> bool:
    """Whether `scheduler.step` samples with a learned variance and so takes the 2C-channel model output."""
    variance_type = getattr(scheduler.config, "variance_type", None)
    return type(scheduler).__name__ in VARIANCE_SCHEDULERS and variance_type in ("learned", "learned_range")


def step_kwargs(scheduler, **candidates) -> dict:
    """The keyword arguments among `candidates` (eta, generator, ...) that `scheduler.step` accepts."""
    parameters = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in candidates.items() if name in parameters}


def guide(model_output: torch.Tensor, scale: float, channels: int, guidance_channels: Optional[int] = None):
    """Classifier-free guidance (Ho & Salimans, 2022) on a doubled batch [conditional; unconditional]:
    pred = uncond + scale * (cond - uncond) on the first `guidance_channels` prediction channels (all `channels` by
    default; the original DiT guides 3 of 4), the conditional prediction on the others, and the variance channels
    (if any) of the conditional half. Returns the conditional half, (N/2, C_out, H, W)."""
    conditional, unconditional = model_output.chunk(2)
    g = channels if guidance_channels is None else guidance_channels
    guided = unconditional[:, :g] + scale * (conditional[:, :g] - unconditional[:, :g])
    return torch.cat([guided, conditional[:, g:]], dim=1)
