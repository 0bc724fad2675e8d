"""`DiTDDPMScheduler`: ancestral sampling with fixed or learned variance on a respaced chain."""

import math
from typing import Optional, Tuple, Union

import torch
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from .scheduling_base import RespacedDiffusionScheduler


class DiTDDPMScheduler(RespacedDiffusionScheduler):
    r"""DDPM sampling (Ho et al., 2020) with the learned variances of Improved DDPM (Nichol & Dhariwal, 2021), as
    DiT samples: x_{t-1} ~ N(mu(x_t, x_0), sigma_t²) with mu the posterior mean of DDPM eq. 7 at the predicted
    x_0, and sigma_t² fixed or learned (`variance_type`). Respaced chains (`set_timesteps`) use their own betas.

    See `RespacedDiffusionScheduler` for the arguments; defaults are DiT's (linear betas 1e-4..0.02 over 1000 steps,
    epsilon prediction, "learned_range" variance, no clipping).

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTDDPMScheduler
        >>> scheduler = DiTDDPMScheduler(timestep_respacing="250")
        >>> scheduler.set_timesteps()
        >>> scheduler.timesteps[:3].tolist(), len(scheduler.timesteps)
        ([999, 995, 991], 250)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> model_output = torch.zeros(1, 8, 8, 8)  # eps = 0, variance values = 0
        >>> scheduler.step(model_output, 999, x).prev_sample.shape
        torch.Size([1, 4, 8, 8])
    """

    samples_learned_variance = True

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[DDPMSchedulerOutput, Tuple]:
        """One step x_t -> x_{t-1} of ancestral sampling.

        Args:
            model_output (`torch.Tensor`): the model output at (`sample`, `timestep`), C or 2C channels.
            timestep (`int`): a value of `self.timesteps`.
            sample (`torch.Tensor`): x_t, (N, C, ...).
            generator (`torch.Generator`, *optional*): for the noise.
            variance_noise (`torch.Tensor`, *optional*): the standard normal noise to use instead of drawing it.
            return_dict (`bool`): return a `DDPMSchedulerOutput` rather than a tuple.

        Returns:
            `DDPMSchedulerOutput` with `prev_sample` (x_{t-1}) and `pred_original_sample` (x_0), or that tuple.
        """
        index = self.position(timestep)
        prediction, variance_values = self.split_model_output(model_output, sample)
        pred_original_sample = self._predict_start(prediction, sample, index)
        mean, _ = self.diffusion.q_posterior(pred_original_sample, sample, index)
        prev_sample = mean
        if index > 0:  # no noise on the last step (x_0 is the posterior mean)
            log_variance = self.diffusion.p_log_variance(self.config.variance_type, index, sample, variance_values)
            std = math.exp(0.5 * log_variance) if isinstance(log_variance, float) else torch.exp(0.5 * log_variance)
            prev_sample = mean + std * self._noise(sample, generator, variance_noise)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
