"""The denoising loop both pipelines run: timesteps, initial noise, classifier-free guidance (optionally in an
interval of timesteps), the scheduler step, step-end callbacks and feature caching."""

import contextlib
import inspect
import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers import DDPMParallelScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..models.feature_cache import feature_cache_for

DEFAULT_NUM_INFERENCE_STEPS = 50  # when the scheduler has no configured respacing

# diffusers' own schedulers whose `step` samples with a learned variance from 2C-channel outputs (ours declare it
# with `samples_learned_variance`). diffusers' DPM-Solvers with variance_type="learned_range" keep the first 3
# channels of any output, for pixel-space models: use them with the default variance_type on 4-channel latents.
DIFFUSERS_LEARNED_VARIANCE_SCHEDULERS = (DDPMScheduler, DDPMParallelScheduler)
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
logger = logging.getLogger(__name__)


def takes_learned_variance(scheduler) -> bool:
    """Whether `scheduler.step` samples with a learned variance and so takes the 2C-channel model output."""
    if not getattr(scheduler, "samples_learned_variance", isinstance(scheduler, DIFFUSERS_LEARNED_VARIANCE_SCHEDULERS)):
        return False
    return getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES


def check_sampling_inputs(scheduler, shape, guidance_scale, num_inference_steps, latents) -> None:
    """The `ValueError`s both pipelines raise for a sampling request that would fail later or return nonsense."""
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number (<= 1: no guidance), got {guidance_scale}.")
    steps = scheduler.config.num_train_timesteps
    if num_inference_steps is not None and not 1 <= num_inference_steps <= steps:
        raise ValueError(
            f"num_inference_steps must be between 1 and the {steps} training steps, got {num_inference_steps}."
        )
    if latents is not None and not latents.is_floating_point():
        raise ValueError(f"latents must be a floating-point tensor (they are cast to float32), got {latents.dtype}.")
    if latents is not None and tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}.")


def use_prediction_channels(scheduler) -> None:
    """Let a diffusers solver that does not sample with a learned variance take the prediction channels.

    `DPMSolverMultistepScheduler.from_config(dit_scheduler.config)` (and DPM-Solver single-step, SA-Solver) inherit
    `variance_type="learned_range"`, which they read as "the model also outputs a variance: keep its first 3
    channels", right only for 3-channel pixel models: on 4-channel latents the step fails. The pipeline gives such
    a scheduler the C prediction channels, so its `variance_type` is set to None (as diffusers' own pipelines
    correct outdated scheduler configs with `register_to_config`)."""
    if hasattr(scheduler, "samples_learned_variance") or takes_learned_variance(scheduler):
        return
    if getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES:
        logger.info("%s takes the prediction channels: its variance_type is set to None.", type(scheduler).__name__)
        scheduler.register_to_config(variance_type=None)


def step_kwargs(scheduler, **candidates) -> dict:
    """The keyword arguments among `candidates` (eta, generator, ...) that `scheduler.step` accepts."""
    parameters = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in candidates.items() if name in parameters}


def guide(model_output: torch.Tensor, scale: float, channels: int, guidance_channels: Optional[int] = None):
    """Classifier-free guidance (Ho & Salimans, 2022) on a doubled batch [unconditional; conditional] (diffusers'
    order, which FasterCache relies on): pred = uncond + scale * (cond - uncond) on the first `guidance_channels`
    prediction channels (all `channels` by default; the original DiT guides 3 of 4), the conditional prediction on
    the others, and the variance channels (if any) of the conditional half. Returns (N/2, C_out, ...)."""
    unconditional, conditional = model_output.chunk(2)
    g = channels if guidance_channels is None else guidance_channels
    guided = unconditional[:, :g] + scale * (conditional[:, :g] - unconditional[:, :g])
    return torch.cat([guided, conditional[:, g:]], dim=1)


def check_cache_hooks(transformer, guided_steps: Sequence[bool], cache_interval: Optional[int]) -> None:
    """The `ValueError`s for a diffusers cache hook (`transformer.enable_cache`) that this call would feed wrong.

    The hooks keep their state per kind of call ("cond" / "cond_uncond", or one state for both): when guidance is on
    at only some steps (`guidance_interval`) the batch changes size between them, and their cached outputs (PAB,
    FasterCache) or step counts (TaylorSeer, MagCache) stop lining up with the chain. `cache_interval` (ours)
    recomputes wherever the batch changes. FasterCache also splits every batch into two halves, so it needs
    guidance at every step unless told the model is guidance-distilled."""
    config = getattr(transformer, "_cache_config", None)
    if config is None:
        return
    name = type(config).__name__.removesuffix("Config")
    if cache_interval is not None and cache_interval > 1:
        raise ValueError(f"cache_interval and the transformer's {name} would both cache: disable one of them.")
    if any(guided_steps) and not all(guided_steps):
        raise ValueError(
            f"The transformer's {name} keeps its state per kind of call, so it cannot follow a chain guided at only "
            "some steps (guidance_interval): guide every step, or use cache_interval, which recomputes where the "
            "batch changes."
        )
    if name == "FasterCache" and not any(guided_steps) and not config.is_guidance_distilled:
        raise ValueError(
            "FasterCache splits every batch into unconditional and conditional halves: sample with "
            "guidance_scale > 1, or enable it with is_guidance_distilled=True."
        )


class GuidedDenoising:
    """Mixin of the pipelines: `denoise`, and the state of the current call that diffusers' step-end callbacks read
    and change, as in diffusers' own pipelines (`pipe.guidance_scale`, `pipe.num_timesteps`, and
    `pipe._interrupt = True` to stop after a step)."""

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

    @property
    def current_timestep(self):
        """The timestep being denoised (None outside a call): what diffusers' PyramidAttentionBroadcast and
        FasterCache read through `current_timestep_callback=lambda: pipe.current_timestep`."""
        return getattr(self, "_current_timestep", None)

    def denoise(
        self,
        shape: Tuple[int, ...],
        conditional: Dict[str, torch.Tensor],
        unconditional: Optional[Dict[str, torch.Tensor]],
        *,
        guidance_scale: float,
        num_inference_steps: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        eta: float = 0.0,
        guidance_channels: Optional[int] = None,
        guidance_interval: Optional[Tuple[int, int]] = None,
        cache_interval: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_tensors: Optional[Dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Run the sampling chain from noise of `shape` (or the given `latents`) and return the final latents.

        `conditional` and `unconditional` are the transformer's conditioning keyword arguments for the batch and for
        its unconditional twin (the null class, the empty prompt), batched along dim 0 as [unconditional;
        conditional] on guided steps. Each model call runs in the transformer's `cache_context` ("cond_uncond" on
        guided steps, "cond" on the others; with the step index, step count and timestep), so that diffusers' cache
        hooks (`transformer.enable_cache`) keep one state per kind of call; they are reset at the start and the end
        of every call, and refused where they would go wrong (`check_cache_hooks`). Guidance is decided once from
        `guidance_scale` (> 1) and applies at the timesteps of `guidance_interval` (low <= t <= high, all by
        default). The chain runs in float32 whatever the transformer's dtype: in half precision its small per-step
        updates would be rounded away (DDIM's samples shrink by several percent in bfloat16). `callback_tensors` are
        the other tensors a step-end callback may read, besides the latents; it may return `{"latents": ...}` to
        replace them."""
        feature_cache = feature_cache_for(cache_interval)  # None when off; a ValueError for a bad interval
        check_sampling_inputs(self.scheduler, shape, guidance_scale, num_inference_steps, latents)
        self._interrupt = False
        self._guidance_scale = guidance_scale
        do_guidance = self.do_classifier_free_guidance  # decided once: the batch layout depends on it
        device = self._execution_device
        dtype = self.transformer.dtype
        channels = self.transformer.config.in_channels

        use_prediction_channels(self.scheduler)
        if num_inference_steps is None and getattr(self.scheduler.config, "timestep_respacing", None) is None:
            num_inference_steps = DEFAULT_NUM_INFERENCE_STEPS
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

        def cast(kwargs):  # conditioning features in the transformer's dtype; labels and masks as they are
            return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in kwargs.items()}

        guided_kwargs = (
            cast({k: torch.cat([unconditional[k], v]) for k, v in conditional.items()}) if do_guidance else {}
        )
        conditional = cast(conditional)
        low, high = guidance_interval or (0, float("inf"))
        extra_step_kwargs = step_kwargs(self.scheduler, eta=eta, generator=generator)
        step_channels = None if takes_learned_variance(self.scheduler) else channels  # the others: prediction only

        guided_steps = [bool(do_guidance and low <= t <= high) for t in self.scheduler.timesteps]
        check_cache_hooks(self.transformer, guided_steps, cache_interval)
        if hasattr(self.transformer, "_reset_stateful_cache"):  # even if an earlier call stopped half-way
            self.transformer._reset_stateful_cache()
        cache_context = getattr(self.transformer, "cache_context", None) or (lambda *a, **k: contextlib.nullcontext())
        try:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                if self.interrupt:
                    break
                self._current_timestep = t
                guided = guided_steps[i]
                model_input = torch.cat([latents, latents]) if guided else latents
                model_input = self.scheduler.scale_model_input(model_input, t).to(dtype)
                kwargs = guided_kwargs if guided else conditional
                timestep = t.to(device).expand(model_input.shape[0])  # per sample: cache hooks split it with the batch
                context = dict(step_index=i, num_inference_steps=self._num_timesteps, timestep=t)
                with cache_context("cond_uncond" if guided else "cond", **context):
                    output = self.transformer(
                        hidden_states=model_input, timestep=timestep, **kwargs, feature_cache=feature_cache
                    ).sample.float()
                if guided:
                    output = guide(output, self.guidance_scale, channels, guidance_channels)
                latents = self.scheduler.step(output[:, :step_channels], t, latents, **extra_step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": latents, **(callback_tensors or {})}
                    callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    latents = (callback_on_step_end(self, i, t, callback_kwargs) or {}).pop("latents", latents)
        finally:
            self._current_timestep = None
        return latents
