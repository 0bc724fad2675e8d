"""`DiTDDIMScheduler`: DDIM sampling on a respaced chain, accepting models that also output a variance."""

from typing import Optional, Tuple, Union

import torch
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .scheduling_base import RespacedDiffusionScheduler


class DiTDDIMScheduler(RespacedDiffusionScheduler):
    r"""DDIM sampling (Song et al., 2021): deterministic for `eta=0`, DDPM-like for `eta=1`. A model output with 2C
    channels (learned variance) is accepted and its variance half ignored: DDIM's variance is set by eta.

    See `RespacedDiffusionScheduler` for the arguments; the config is the one of `DiTDDPMScheduler`, so either
    converts into the other with `from_config`.

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTDDIMScheduler
        >>> scheduler = DiTDDIMScheduler()
        >>> scheduler.set_timesteps(25)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> scheduler.step(torch.zeros(1, 8, 8, 8), scheduler.timesteps[0], x, eta=0.0).prev_sample.shape
        torch.Size([1, 4, 8, 8])
    """

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[DDIMSchedulerOutput, Tuple]:
        """One DDIM step x_t -> x_{t-1} on the sampling chain (Song et al., 2021, eq. 12):

            x_{t-1} = sqrt(a_{t-1}) x_0 + sqrt(1 - a_{t-1} - sigma_t²) eps + sigma_t z,
            sigma_t = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1})      (eq. 16)

        with a = alpha_bar, x_0 and eps predicted by the model and z ~ N(0, I).

        Args:
            model_output (`torch.Tensor`): the model output at (`sample`, `timestep`), C or 2C channels.
            timestep (`int`): a value of `self.timesteps`.
            sample (`torch.Tensor`): x_t.
            eta (`float`, defaults to 0.0): the weight of the noise (0: DDIM, 1: DDPM's posterior variance), in
                [0, 1]: above 1, sigma_t can exceed sqrt(1 - a_{t-1}) and the direction term's coefficient
                sqrt(1 - a_{t-1} - sigma_t²) of eq. 12 has no real value.
            generator (`torch.Generator`, *optional*), variance_noise (`torch.Tensor`, *optional*): for z.
            return_dict (`bool`): return a `DDIMSchedulerOutput` rather than a tuple.
        """
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1] (0: DDIM, 1: DDPM's posterior variance), got {eta}.")
        index = self.position(timestep)
        prediction, _ = self.split_model_output(model_output, sample)
        pred_original_sample = self._predict_start(prediction, sample, index)
        if self.config.clip_sample:  # eps consistent with the clipped x_0
            pred_epsilon = self.diffusion.noise_from_start(pred_original_sample, sample, index)
        else:
            pred_epsilon = self.diffusion.predict_noise(prediction, sample, index, self.config.prediction_type)

        alpha_bar = float(self.diffusion.alphas_cumprod[index])
        alpha_bar_prev = float(self.diffusion.alphas_cumprod_prev[index])
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        prev_sample = alpha_bar_prev**0.5 * pred_original_sample + (1 - alpha_bar_prev - sigma**2) ** 0.5 * pred_epsilon
        if eta > 0:
            prev_sample = prev_sample + sigma * self._noise(sample, generator, variance_noise)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
