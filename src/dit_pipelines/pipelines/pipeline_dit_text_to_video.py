"""`DiTTextToVideoPipeline`: text-to-video generation with a spatio-temporal DiT on VAE latents and T5 prompts."""

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor
from einops import rearrange

from ..latents import unscale_latents, vae_scale_factor
from ..models import VideoDiTModel
from .denoising import GuidedDenoising
from .lora import DiTLoraLoaderMixin
from .text_encoding import encode_text

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
logger = logging.getLogger(__name__)


@dataclass
class DiTVideoPipelineOutput(BaseOutput):
    """`frames`: (B, F, H, W, C) floats in [0, 1] for "np", a list of B lists of F PIL images for "pil",
    (B, F, C, H, W) for "pt", latents (B, C, F, h, w) for "latent" (diffusers' video convention, so that
    `diffusers.utils.export_to_video(frames[0])` and `export_to_gif` work)."""

    frames: Union[np.ndarray, torch.Tensor, List[List[PIL.Image.Image]]]


class DiTTextToVideoPipeline(GuidedDenoising, DiffusionPipeline, DiTLoraLoaderMixin):
    r"""Text-to-video generation with a `VideoDiTModel` (Latte / STDiT family).

    Components:
        tokenizer (`T5TokenizerFast`), text_encoder (`T5EncoderModel`): the prompt encoder (any T5, for example
            `google/t5-v1_1-xxl` as in PixArt-α and Open-Sora).
        transformer ([`VideoDiTModel`]) with `conditioning="text"`.
        scheduler: [`DiTDDPMScheduler`] / [`DiTDDIMScheduler`] or any diffusers scheduler.
        vae ([`AutoencoderKL`], *optional*): decodes latents frame by frame; without it the model works on pixels.

    Example:
        >>> from diffusers import DiffusionPipeline
        >>> from diffusers.utils import export_to_gif
        >>> import dit_pipelines
        >>> pipe = DiffusionPipeline.from_pretrained("path/to/saved/pipeline")  # doctest: +SKIP
        >>> frames = pipe("a red ball bounces on a table", num_frames=8).frames[0]  # doctest: +SKIP
        >>> export_to_gif(frames, "ball.gif")  # doctest: +SKIP
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self, tokenizer, text_encoder, transformer: VideoDiTModel, scheduler, vae: Optional[AutoencoderKL] = None
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler, vae=vae
        )
        self.vae_scale_factor = vae_scale_factor(vae)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)

    def encode_prompt(
        self,
        prompt: Union[str, List[str], None],
        negative_prompt: Union[str, List[str], None] = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        device: Optional[torch.device] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        max_sequence_length: Optional[int] = None,
    ):
        """T5 embeddings and masks of the prompts (and of the negative prompts when guiding), repeated
        `num_videos_per_prompt` times: (embeds, mask, negative_embeds, negative_mask), the last two `None` without
        guidance (the negative prompt defaults to the empty one). Precomputed embeddings must come with their masks.
        Prompts longer than `max_sequence_length` tokens are cut there, with a warning naming them."""
        device = device or self._execution_device
        max_sequence_length = self.tokenizer.model_max_length if max_sequence_length is None else max_sequence_length
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be a positive number of tokens, got {max_sequence_length}.")
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
            lengths = [len(ids) for ids in self.tokenizer(prompts).input_ids]
            cut = [p for p, n in zip(prompts, lengths) if n > max_sequence_length]
            if cut:
                message = "These prompts are longer than max_sequence_length=%d tokens and are cut: %s"
                logger.warning(message, max_sequence_length, cut)
            prompt_embeds, prompt_attention_mask = encode_text(
                self.tokenizer, self.text_encoder, prompts, max_sequence_length, device
            )
        batch = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = "" if negative_prompt is None else negative_prompt
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != batch:
                raise ValueError(f"Got {len(negatives)} negative prompts for {batch} prompts.")
            negative_prompt_embeds, negative_prompt_attention_mask = encode_text(
                self.tokenizer, self.text_encoder, negatives, prompt_embeds.shape[1], device
            )

        def repeat(x):
            return None if x is None else x.to(device).repeat_interleave(num_videos_per_prompt, dim=0)

        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        return tuple(
            map(repeat, (prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask))
        )

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_videos_per_prompt,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        num_frames,
        height,
        width,
        output_type,
        callback_tensor_inputs,
    ):
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`.")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be at least 1, got {num_videos_per_prompt}.")
        if prompt_embeds is not None and prompt_attention_mask is None:
            raise ValueError("`prompt_embeds` need their `prompt_attention_mask` (1 = token, 0 = padding).")
        if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
            raise ValueError("`negative_prompt_embeds` need their `negative_prompt_attention_mask`.")
        for embeds, mask, name in (
            (prompt_embeds, prompt_attention_mask, "prompt"),
            (negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt"),
        ):
            if embeds is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(
                    f"{name}_attention_mask must be (batch, tokens) = {tuple(embeds.shape[:2])} like {name}_embeds, "
                    f"got {tuple(mask.shape)}."
                )
        if (
            prompt_embeds is not None
            and negative_prompt_embeds is not None
            and (prompt_embeds.shape != negative_prompt_embeds.shape)
        ):
            raise ValueError(
                f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
            )
        if self.transformer.config.conditioning != "text":
            raise ValueError("DiTTextToVideoPipeline needs a VideoDiTModel with conditioning='text'.")
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        if height <= 0 or width <= 0 or height % factor or width % factor:
            raise ValueError(f"height and width must be positive multiples of {factor}, got {height}x{width}.")
        if num_frames < 1 or num_frames % self.transformer.config.temporal_patch_size:
            raise ValueError(
                f"num_frames must be a positive multiple of the temporal patch size "
                f"{self.transformer.config.temporal_patch_size}, got {num_frames}."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
        if set(callback_tensor_inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}.")

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: Optional[int] = None) -> torch.Tensor:
        """(B, C, F, h, w) latents -> (B, C_img, F, H, W) pixels in [-1, 1], decoding `decode_chunk_size` frames at
        a time (all at once by default)."""
        if self.vae is None:
            return latents
        frames = unscale_latents(rearrange(latents, "b c f h w -> (b f) c h w"), self.vae.config)
        chunk = decode_chunk_size or frames.shape[0]
        decoded = [
            self.vae.decode(frames[i : i + chunk].to(self.vae.dtype)).sample for i in range(0, len(frames), chunk)
        ]
        return rearrange(torch.cat(decoded).float(), "(b f) c h w -> b c f h w", b=latents.shape[0])

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        negative_prompt: Union[str, List[str], None] = None,
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: float = 4.0,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        prompt_attention_mask: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_attention_mask: Optional[torch.Tensor] = None,
        num_videos_per_prompt: int = 1,
        max_sequence_length: Optional[int] = None,
        decode_chunk_size: Optional[int] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable, PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ("latents",),
        guidance_interval: Optional[Tuple[int, int]] = None,
        cache_interval: Optional[int] = None,
    ):
        r"""Generate videos from text.

        Args:
            prompt (`str` or `list`): what to show; or pass `prompt_embeds` with `prompt_attention_mask`.
            negative_prompt (`str` or `list`, *optional*): the unconditional branch of classifier-free guidance;
                the empty prompt by default. Not with `negative_prompt_embeds`.
            num_frames (`int`, *optional*): frames to generate; defaults to the model's `sample_frames`. Counts
                unseen in training work (temporal positions are interpolated).
            height, width (`int`, *optional*): frame size in pixels; defaults to `sample_size` x the VAE factor.
            num_inference_steps (`int`, *optional*): defaults to the scheduler's `timestep_respacing`, else 50.
            guidance_scale (`float`, defaults to 4.0): classifier-free guidance; <= 1 turns it off.
            eta (`float`, defaults to 0.0): DDIM's eta, for schedulers whose `step` takes it.
            generator (`torch.Generator`, *optional*): for the initial noise and the sampling noise.
            latents (`torch.Tensor`, *optional*): initial noise (B, C, F, h, w).
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask: precomputed
                T5 embeddings (B, L, D) and masks (B, L).
            num_videos_per_prompt (`int`, defaults to 1): videos per prompt.
            max_sequence_length (`int`, *optional*): T5 tokens; defaults to the tokenizer's `model_max_length`.
            decode_chunk_size (`int`, *optional*): frames decoded by the VAE at once (lower it to save memory).
            output_type (`str`, defaults to "np"): "np", "pil", "pt" or "latent" (see `DiTVideoPipelineOutput`).
            return_dict (`bool`, defaults to `True`): return a `DiTVideoPipelineOutput` rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): `callback(pipe, i, t, callback_kwargs)` after each step;
                may return replacements for the tensors in `callback_on_step_end_tensor_inputs`.
            guidance_interval (`(int, int)`, *optional*): guide only at timesteps `low <= t <= high`.
            cache_interval (`int`, *optional*): feature caching (FORA), off by default: the blocks compute their
                attention, cross-attention and MLP outputs at every `cache_interval`-th step only and reuse them in
                between (its effect on prompt following is in `benchmarks/RESULTS.md`).

        Returns:
            `DiTVideoPipelineOutput` with `frames`, or the tuple `(frames,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        config = self.transformer.config
        num_frames = config.sample_frames if num_frames is None else num_frames
        height = config.sample_size * self.vae_scale_factor if height is None else height
        width = config.sample_size * self.vae_scale_factor if width is None else width
        self.check_inputs(
            prompt,
            negative_prompt,
            num_videos_per_prompt,
            prompt_embeds,
            prompt_attention_mask,
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            num_frames,
            height,
            width,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                negative_prompt,
                guidance_scale > 1,
                num_videos_per_prompt,
                self._execution_device,
                prompt_embeds,
                prompt_attention_mask,
                negative_prompt_embeds,
                negative_prompt_attention_mask,
                max_sequence_length,
            )
        )
        if prompt_embeds.shape[-1] != config.text_embed_dim:
            raise ValueError(
                f"The text embeddings are {prompt_embeds.shape[-1]} wide, but the transformer takes "
                f"text_embed_dim={config.text_embed_dim}: use the text encoder it was trained with."
            )
        factor = self.vae_scale_factor
        shape = (prompt_embeds.shape[0], config.in_channels, num_frames, height // factor, width // factor)
        latents = self.denoise(
            shape,
            {"encoder_hidden_states": prompt_embeds, "encoder_attention_mask": prompt_attention_mask},
            {"encoder_hidden_states": negative_prompt_embeds, "encoder_attention_mask": negative_prompt_attention_mask},
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            latents=latents,
            eta=eta,
            guidance_interval=guidance_interval,
            cache_interval=cache_interval,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_tensors={"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds},
        )

        if output_type == "latent":
            frames = latents
        else:
            frames = self.video_processor.postprocess_video(
                self.decode_latents(latents, decode_chunk_size), output_type
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return DiTVideoPipelineOutput(frames=frames)
