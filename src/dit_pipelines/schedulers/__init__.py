"""Float64 diffusion math, the DDPM and DDIM schedulers with learned variances and respacing, and the hybrid loss."""

from .gaussian_diffusion import GaussianDiffusion, inference_timesteps, make_betas, timesteps_from_respacing
from .losses import DiffusionLoss, diffusion_loss, discretized_gaussian_log_likelihood, normal_kl, vlb_term
from .scheduling_base import RespacedDiffusionScheduler
from .scheduling_ddim import DiTDDIMScheduler
from .scheduling_ddpm import DiTDDPMScheduler

__all__ = [
    "DiffusionLoss",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "vlb_term",
    "DiTDDIMScheduler",
    "DiTDDPMScheduler",
    "GaussianDiffusion",
    "RespacedDiffusionScheduler",
    "make_betas",
    "timesteps_from_respacing",
    "inference_timesteps",
]
