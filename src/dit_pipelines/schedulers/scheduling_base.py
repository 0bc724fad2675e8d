"""What the DDPM and DDIM schedulers share: the float64 chains, respacing, noising and the training loss."""

from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .gaussian_diffusion import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    GaussianDiffusion,
    inference_timesteps,
    make_betas,
    timesteps_from_respacing,
)
from .losses import DiffusionLoss, diffusion_loss


class RespacedDiffusionScheduler(SchedulerMixin, ConfigMixin):
    r"""Base of `DiTDDPMScheduler` and `DiTDDIMScheduler`, which share this config, so that
    `DiTDDIMScheduler.from_config(ddpm.config)` and back lose nothing.

    Args:
        num_train_timesteps (`int`, defaults to 1000): T, the length of the training chain.
        beta_start (`float`, defaults to 0.0001), beta_end (`float`, defaults to 0.02), beta_schedule (`str`,
            defaults to "linear"): the betas; "linear", "scaled_linear" or "squaredcos_cap_v2".
        trained_betas (`list` of `float`, *optional*): explicit betas, overriding the schedule.
        variance_type (`str`, defaults to "learned_range"): the variance of p(x_{t-1} | x_t): "fixed_small",
            "fixed_large", "learned" (the model outputs a log-variance) or "learned_range" (Improved DDPM eq. 15).
            With a learned type the model output has 2*C channels: the prediction, then the variance values.
        prediction_type (`str`, defaults to "epsilon"): what the model predicts: "epsilon", "v_prediction" or
            "sample".
        clip_sample (`bool`, defaults to `False`), clip_sample_range (`float`, defaults to 1.0): clip the predicted
            x_0 when sampling (for pixel-space models; DiT's latents are not clipped).
        timestep_spacing (`str`, defaults to "linspace"): how `set_timesteps(n)` picks n steps, as in diffusers:
            "linspace" (first and last included; DiT's spacing), "leading" or "trailing".
        steps_offset (`int`, defaults to 0): offset added to "leading" timesteps, as in diffusers.
        timestep_respacing (`str`, *optional*): the default sampling chain used by `set_timesteps()` with no
            arguments, in Improved DDPM's notation: "250", "ddim50", or sections such as "10,15,20".
    """

    config_name = "scheduler_config.json"
    order = 1
    #: Whether `step` samples with the model's learned variance, and so takes its 2C-channel output when
    #: `variance_type` is a learned one (pipelines then pass all channels, otherwise the C prediction channels).
    samples_learned_variance = False

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[List[float]] = None,
        variance_type: str = "learned_range",
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        timestep_respacing: Optional[str] = None,
    ):
        for name, value, allowed in (
            ("beta_schedule", beta_schedule, BETA_SCHEDULES),
            ("variance_type", variance_type, VARIANCE_TYPES),
            ("prediction_type", prediction_type, PREDICTION_TYPES),
            ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
        if trained_betas is not None:
            betas = torch.tensor(trained_betas, dtype=torch.float64)
            if betas.shape != (num_train_timesteps,):
                raise ValueError(
                    f"trained_betas has {betas.numel()} values; num_train_timesteps={num_train_timesteps} needs one "
                    "per training step."
                )
        else:
            betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"Every beta must be in (0, 1) (the noise added at a step, a variance fraction); got values from "
                f"{float(betas.min())} to {float(betas.max())} (beta_start={beta_start}, beta_end={beta_end})."
            )
        if timestep_respacing is not None:
            timesteps_from_respacing(num_train_timesteps, timestep_respacing)  # fail early on a bad spec

        # Our defaults are DiT's, not diffusers': record them as chosen, so that a diffusers scheduler made with
        # `from_config(self.config)` inherits them instead of falling back to its own defaults.
        self.register_to_config(_use_default_values=[])

        #: The training chain of all T steps: used by `add_noise`, `get_velocity` and `training_loss`.
        self.train_diffusion = GaussianDiffusion(betas)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._use_chain(self.train_diffusion)

    def _use_chain(self, diffusion: GaussianDiffusion, device=None) -> None:
        #: The sampling chain: the training chain, or the respaced one chosen by `set_timesteps`.
        self.diffusion = diffusion
        self.timesteps = diffusion.timesteps.flip(0).to(device)
        self._position = {int(t): i for i, t in enumerate(diffusion.timesteps)}

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Choose the sampling chain and respace it (the betas of the kept steps are recomputed).

        Args:
            num_inference_steps (`int`, *optional*): number of steps, spread by `config.timestep_spacing`. If
                neither this nor `timesteps` is given, `config.timestep_respacing` is used, else all T steps.
            device: where to put `self.timesteps`.
            timesteps (`list` of `int`, *optional*): explicit training timesteps to keep.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Pass either num_inference_steps or timesteps, not both.")
        if timesteps is not None:
            kept = sorted({int(t) for t in timesteps})
            if not kept or kept[0] < 0 or kept[-1] >= T:
                raise ValueError(f"Custom timesteps must be in [0, {T - 1}], got {list(timesteps)}.")
        elif num_inference_steps is not None:
            if num_inference_steps > T:
                raise ValueError(
                    f"num_inference_steps ({num_inference_steps}) cannot be larger than "
                    f"num_train_timesteps ({T}): the chain only has {T} steps."
                )
            kept = inference_timesteps(T, num_inference_steps, self.config.timestep_spacing, self.config.steps_offset)
            if kept[-1] >= T:
                raise ValueError(f"steps_offset={self.config.steps_offset} pushes timesteps past {T - 1}.")
        elif self.config.timestep_respacing is not None:
            kept = timesteps_from_respacing(T, self.config.timestep_respacing)
        else:
            kept = list(range(T))
        self.num_inference_steps = len(kept)
        self._use_chain(self.train_diffusion.respaced(kept), device)

    def position(self, timestep: Union[int, torch.Tensor]) -> int:
        """Position of a training `timestep` in the sampling chain (0 = last step)."""
        t = int(timestep)
        if t not in self._position:
            raise ValueError(f"Timestep {t} is not in the sampling chain; use a value of `scheduler.timesteps`.")
        return self._position[t]

    def previous_timestep(self, timestep: Union[int, torch.Tensor]) -> int:
        """The timestep that follows `timestep` when sampling, or -1 after the last one."""
        i = self.position(timestep)
        return int(self.diffusion.timesteps[i - 1]) if i > 0 else -1

    def split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Split a model output into its prediction (C channels) and variance values (C channels, or `None`)."""
        channels = sample.shape[1]
        if model_output.shape[1] == channels:
            return model_output, None
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"The model output has {model_output.shape[1]} channels; expected {channels} (prediction) or "
                f"{2 * channels} (prediction and variance) for a sample with {channels} channels."
            )
        if self.config.variance_type not in ("learned", "learned_range"):
            raise ValueError(
                f"The model output has {2 * channels} channels (a learned variance), but variance_type is "
                f"{self.config.variance_type!r}: use 'learned' or 'learned_range', or pass only the first "
                f"{channels} channels."
            )
        prediction, variance_values = model_output.chunk(2, dim=1)
        return prediction, variance_values

    def _predict_start(self, prediction: torch.Tensor, sample: torch.Tensor, index: int) -> torch.Tensor:
        """x_0 implied by the model at chain position `index`, clipped if the config asks for it."""
        x_start = self.diffusion.predict_start(prediction, sample, index, self.config.prediction_type)
        if self.config.clip_sample:
            x_start = x_start.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x_start

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """Identity: DDPM/DDIM inputs need no scaling (kept for interchangeability with other schedulers)."""
        return sample

    def _training_timesteps(self, timesteps: torch.Tensor, device) -> torch.Tensor:
        """`timesteps` as indices of the training chain, checked to lie in [0, T - 1] (-1 would wrap to T - 1)."""
        timesteps = torch.as_tensor(timesteps).to(device).long()
        T = self.config.num_train_timesteps
        if bool(((timesteps < 0) | (timesteps >= T)).any()):
            raise ValueError(f"Training timesteps must be in [0, {T - 1}], got {timesteps.unique().tolist()[:10]}.")
        return timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) with the given noise, at training `timesteps` (N,)."""
        return self.train_diffusion.q_sample(
            original_samples, noise, self._training_timesteps(timesteps, original_samples.device)
        )

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 at training `timesteps` (N,)."""
        return self.train_diffusion.velocity(sample, noise, self._training_timesteps(timesteps, sample.device))

    def training_loss(
        self,
        model_output: torch.Tensor,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        vlb_weight: float = 0.001,
    ) -> DiffusionLoss:
        """The training objective for a model output at x_t = `add_noise(original_samples, noise, timesteps)`:
        L_simple, plus lambda * L_vlb when the variance is learned (Improved DDPM's hybrid loss, §3.1).
        See `dit_pipelines.schedulers.losses.diffusion_loss`."""
        prediction, variance_values = self.split_model_output(model_output, original_samples)
        return diffusion_loss(
            self.train_diffusion,
            prediction,
            variance_values,
            original_samples,
            noise,
            self._training_timesteps(timesteps, original_samples.device),
            prediction_type=self.config.prediction_type,
            variance_type=self.config.variance_type,
            vlb_weight=vlb_weight,
        )

    def _noise(
        self, sample: torch.Tensor, generator: Optional[torch.Generator], variance_noise: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The standard normal z of a stochastic step: `variance_noise` if given, else drawn like `sample`."""
        if variance_noise is not None:
            return variance_noise
        return randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
