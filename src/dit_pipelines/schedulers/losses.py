"""The diffusion training objective: L_simple, L_vlb and the hybrid L_simple + lambda * L_vlb of Improved DDPM
(Nichol & Dhariwal, 2021, §3.1), with DiT's weighting."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .gaussian_diffusion import GaussianDiffusion


@dataclass
class DiffusionLoss:
    """Per-sample losses, each of shape (N,). `loss` is what to minimise (take its mean)."""

    loss: torch.Tensor
    mse: torch.Tensor  # L_simple: mean squared error of the prediction
    vlb: Optional[torch.Tensor] = (
        None  # L_t of the variational bound, in bits per dimension (None: no learned variance)
    )
    mae: Optional[torch.Tensor] = None  # masked training's reconstruction term (`training.masking`), unweighted


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the first: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats, elementwise, of data x in [-1, 1] quantised to 256 levels under the discretised Gaussian
    decoder N(mean, exp(log_scale)²) (DDPM eq. 13): the Gaussian mass of the bin [x - 1/255, x + 1/255], with the
    first and last bins extended to -inf and +inf. Uses the exact normal CDF, where the reference code of Improved
    DDPM and DiT uses a tanh approximation."""
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1.0 / 255)
    lower = inv_std * (x - mean - 1.0 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X < x + 1/255): the first bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > x - 1/255): the last bin
    log_bin = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin))


def vlb_term(
    diffusion: GaussianDiffusion,
    mean_prediction: torch.Tensor,
    log_variance: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """L_t of the variational bound (DDPM eq. 5) in bits per dimension, shape (N,):
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the decoder NLL -log p(x_0 | x_1) at t = 0.
    Computed in at least float32 (the normal CDF has no half-precision kernels, and logs of small variances need
    the range)."""
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    mean_prediction, log_variance, x_start, x_t = (z.to(dtype) for z in (mean_prediction, log_variance, x_start, x_t))
    pred_start = diffusion.predict_start(mean_prediction, x_t, timesteps, prediction_type)
    model_mean, _ = diffusion.q_posterior(pred_start, x_t, timesteps)
    true_mean, true_log_variance = diffusion.q_posterior(x_start, x_t, timesteps)
    vlb = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, log_variance)) / math.log(2.0)
    decoder = timesteps == 0
    if decoder.any():  # L_0 only where t = 0 (about 1 sample in 1000): the normal CDFs were ~60% of the loss's time
        log_scale = 0.5 * log_variance[decoder]
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start[decoder], model_mean[decoder], log_scale))
        vlb = vlb.index_put((decoder,), nll / math.log(2.0))
    return vlb


def diffusion_loss(
    diffusion: GaussianDiffusion,
    prediction: torch.Tensor,
    variance_values: Optional[torch.Tensor],
    x_start: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str = "epsilon",
    variance_type: str = "learned_range",
    vlb_weight: float = 0.001,
) -> DiffusionLoss:
    """L_simple, plus lambda * T * L_t when the variance is learned: the hybrid loss of Improved DDPM (§3.1).

    With t uniform, T * L_t is an unbiased estimate of L_vlb = L_0 + ... + L_{T-1}, so the hybrid loss is
    L_simple + lambda * L_vlb with lambda = `vlb_weight` (0.001 in the paper; at T = 1000 the VLB term has weight 1,
    which is DiT's setting). The VLB sees the mean prediction detached: the variance learns from the bound
    without disturbing the mean, which L_simple alone trains.

    Args:
        diffusion: the training chain (`scheduler.train_diffusion`).
        prediction: (N, C, ...) the model's eps / v / x_0 prediction; variance_values: (N, C, ...) or `None`.
        x_start, noise, timesteps: x_0, the noise and the training timesteps (N,) that made x_t.
    """
    x_t = diffusion.q_sample(x_start, noise, timesteps)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = diffusion.velocity(x_start, noise, timesteps)
    else:
        target = x_start
    mse = mean_flat((prediction - target) ** 2)
    if variance_type not in ("learned", "learned_range"):
        return DiffusionLoss(loss=mse, mse=mse)
    log_variance = diffusion.p_log_variance(variance_type, timesteps, x_t, variance_values)
    vlb = vlb_term(diffusion, prediction.detach(), log_variance, x_start, x_t, timesteps, prediction_type)
    return DiffusionLoss(loss=mse + vlb_weight * len(diffusion) * vlb.to(mse.dtype), mse=mse, vlb=vlb)
