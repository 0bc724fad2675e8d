"""`DiTImagePipeline`: class-conditional image generation with a DiT, in pixel space or on VAE latents."""

import inspect
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor

from ..latents import unscale_latents, vae_scale_factor
from ..models import ClassConditionalUNet, DiTModel
from .denoising import GuidedDenoising
from .from_diffusers import HUB_ARGUMENTS, diffusers_dit_components, diffusers_dit_model_index
from .lora import DiTLoraLoaderMixin

ClassLabels = Union[int, str, List[Union[int, str]], torch.Tensor]
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
IMAGE_OUTPUT_TYPES = ("pil", "np")  # pictures: 1 (grey) or 3 (RGB) channels, decoded by the VAE if there is one


def _flat_labels(labels) -> List[Union[int, str]]:
    """`labels` flattened to a list of ints and names (see `DiTImagePipeline._class_ids`)."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"Class label tensors must hold integers, got dtype {labels.dtype}.")
        return labels.reshape(-1).tolist()
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind in "iu":
            return labels.reshape(-1).tolist()
        if labels.dtype.kind in "UO":  # names (or objects, each checked)
            return _flat_labels(labels.reshape(-1).tolist())
    if isinstance(labels, (list, tuple, range)) or inspect.isgenerator(labels):
        return [label for item in labels for label in _flat_labels(item)]
    if isinstance(labels, str) or (isinstance(labels, (int, np.integer)) and not isinstance(labels, (bool, np.bool_))):
        return [labels if isinstance(labels, str) else int(labels)]
    raise ValueError(
        "Class labels must be class indices (ints, numpy integers, integer tensors or arrays) or names from id2label, "
        f"alone or in lists; got {labels!r} of type {type(labels).__name__}."
    )


class DiTImagePipeline(GuidedDenoising, DiffusionPipeline, DiTLoraLoaderMixin):
    r"""Class-conditional generation with a Diffusion Transformer (Peebles & Xie, 2023).

    Components:
        transformer ([`DiTModel`]): the class-conditional DiT, or the U-Net baseline (`ClassConditionalUNet`,
            diffusers' `UNet2DModel` called alike), sampled the same way.
        scheduler: [`DiTDDPMScheduler`] / [`DiTDDIMScheduler`] (learned variances, respacing) or any diffusers
            scheduler (for example `DPMSolverMultistepScheduler`), which is given the prediction channels only
            unless its `variance_type` is a learned one.
        vae ([`AutoencoderKL`], *optional*): decodes latents to images; without it the DiT works in pixel space
            (1 or 3 channels; other models without a VAE give only `output_type="latent"` or `"pt"`).
        id2label (`dict`, *optional*): class index -> name; several names may be separated by commas
            ("tench, Tinca tinca"). Saved in `model_index.json`.

    `DiTImagePipeline.from_pretrained` also loads a diffusers `DiTPipeline` ("facebook/DiT-XL-2-256"), converted
    with its VAE, class names and the paper's sampler (see `from_pretrained`).

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel
        >>> model = DiTModel.from_preset("DiT-S/4", sample_size=8, in_channels=3, num_classes=2)
        >>> pipe = DiTImagePipeline(model, DiTDDPMScheduler(), id2label={0: "cat", 1: "dog"})
        >>> images = pipe(["dog", "cat"], num_inference_steps=5, generator=torch.manual_seed(0)).images
        >>> len(images), images[0].size
        (2, (8, 8))
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: "DiTModel | ClassConditionalUNet",
        scheduler,
        vae: Optional[AutoencoderKL] = None,
        id2label: Optional[Dict[Union[int, str], str]] = None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        id2label = {int(k): v for k, v in (id2label or {}).items()}
        self.register_to_config(id2label={str(k): v for k, v in sorted(id2label.items())} if id2label else None)
        self.id2label = id2label
        # name -> indices, each comma-separated synonym, compared without case or surrounding spaces
        self.labels: Dict[str, List[int]] = {}
        for k, names in id2label.items():
            for name in names.split(","):
                self.labels.setdefault(name.strip().lower(), []).append(k)
        self.vae_scale_factor = vae_scale_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "DiTImagePipeline":
        """A saved `DiTImagePipeline` (folder or Hub repo id), as `DiffusionPipeline.from_pretrained` loads it, or a
        diffusers `DiTPipeline` such as `facebook/DiT-XL-2-256`, converted (see `pipelines.from_diffusers`): its
        transformer as a `DiTModel`, its VAE and `id2label`, and the paper's sampler (250 respaced DDPM steps with
        the learned variance) on its scheduler's betas. For the original DiT's FID protocol, sample with
        `guidance_channels=3` (it guides 3 of the 4 latent channels).

        >>> pipe = DiTImagePipeline.from_pretrained("facebook/DiT-XL-2-256")  # doctest: +SKIP
        >>> image = pipe("white shark", guidance_channels=3).images[0]  # doctest: +SKIP
        """
        hub = {k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs}
        model_index = diffusers_dit_model_index(pretrained_model_name_or_path, **hub)
        if model_index is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(**diffusers_dit_components(pretrained_model_name_or_path, model_index, **kwargs))

    def get_label_ids(self, label: Union[str, List[str]]) -> List[int]:
        """Class indices of one class name or a list of them (names from `id2label`, case-insensitive)."""
        names = [label] if isinstance(label, str) else list(label)
        unknown = [n for n in names if n.strip().lower() not in self.labels]
        if unknown:
            known = ", ".join(sorted(self.labels)[:20]) + (", ..." if len(self.labels) > 20 else "")
            raise ValueError(f"Unknown class name(s) {unknown}; known names: {known or 'none (no id2label)'}.")
        ids = [self.labels[n.strip().lower()] for n in names]
        for name, matches in zip(names, ids):
            if len(matches) > 1:
                raise ValueError(f"Class name {name!r} is ambiguous (classes {matches}); pass the class index.")
        return [matches[0] for matches in ids]

    def _class_ids(self, class_labels: ClassLabels) -> List[int]:
        """Class indices of `class_labels`: ints, numpy integers, integer tensors or `id2label` names, alone or in
        (nested) lists, which are flattened as diffusers' pipelines do. Anything else is a `ValueError`: a float or a
        bool would silently pick another class."""
        ids = [self.get_label_ids(c)[0] if isinstance(c, str) else c for c in _flat_labels(class_labels)]
        num_classes = self.transformer.num_classes
        bad = [i for i in ids if not 0 <= i < num_classes]
        if not ids or bad:
            raise ValueError(f"Class labels must be in [0, {num_classes - 1}], got {ids if not ids else bad}.")
        return ids

    def check_inputs(
        self,
        height,
        width,
        guidance_scale,
        guidance_channels,
        guidance_interval,
        num_images_per_prompt,
        output_type,
        num_images,
        generator,
        callback_tensor_inputs,
    ):
        multiple = self.transformer.input_multiple  # a DiT's patch size, a U-Net's downsampling
        factor = self.vae_scale_factor * multiple
        if height <= 0 or width <= 0 or height % factor or width % factor:
            unit = "patch size" if isinstance(self.transformer, DiTModel) else "U-Net downsampling"
            raise ValueError(
                f"height and width must be positive multiples of {factor} (VAE factor {self.vae_scale_factor} x "
                f"{unit} {multiple}), got {height}x{width}."
            )
        if guidance_scale > 1 and not self.transformer.has_null_class:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs classifier-free guidance, but the transformer was trained "
                "without a null class (class_dropout_prob=0); use guidance_scale <= 1."
            )
        channels = self.transformer.config.in_channels
        if guidance_channels is not None and not 1 <= guidance_channels <= channels:
            raise ValueError(f"guidance_channels must be between 1 and {channels}, got {guidance_channels}.")
        if guidance_interval is not None and not (
            len(guidance_interval) == 2 and 0 <= guidance_interval[0] <= guidance_interval[1]
        ):
            raise ValueError(
                f"guidance_interval must be (low, high) timesteps with 0 <= low <= high, got {guidance_interval}."
            )
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
        if self.vae is None and output_type in IMAGE_OUTPUT_TYPES and channels not in (1, 3):
            raise ValueError(
                f"The transformer makes {channels}-channel latents and the pipeline has no VAE to decode them, so "
                f'there is no image to return as output_type="{output_type}": set `pipe.vae` (an AutoencoderKL; '
                'dit-pipelines convert --vae), or ask for output_type="latent" or "pt".'
            )
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(f"Got {len(generator)} generators for {num_images} images; pass one, or one per image.")
        unknown = set(callback_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}.")

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        guidance_scale: float = 4.0,
        num_inference_steps: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable, PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ("latents",),
        guidance_channels: Optional[int] = None,
        guidance_interval: Optional[Tuple[int, int]] = None,
        cache_interval: Optional[int] = None,
    ):
        r"""Generate images of the given classes.

        Args:
            class_labels (`int`, `str`, list of them, or `torch.Tensor`): classes, as indices or names of `id2label`.
            guidance_scale (`float`, defaults to 4.0): classifier-free guidance scale; <= 1 turns guidance off.
            num_inference_steps (`int`, *optional*): sampling steps. Defaults to the scheduler's
                `timestep_respacing` if it has one (e.g. DiT's "250"), else 50.
            generator (`torch.Generator`, *optional*): for the initial latents and the sampling noise.
            latents (`torch.Tensor`, *optional*): initial noise of shape (N, C, height/f, width/f), N = number of
                labels x `num_images_per_prompt`.
            height, width (`int`, *optional*): image size in pixels; defaults to the model's `sample_size` times the
                VAE factor. Must be divisible by the VAE factor times the patch size.
            eta (`float`, defaults to 0.0): DDIM's eta, passed to schedulers whose `step` takes it.
            num_images_per_prompt (`int`, defaults to 1): images per class label.
            output_type (`str`, defaults to "pil"): "pil", "np" (N, H, W, C) in [0, 1], "pt" (N, C, H, W) in [0, 1],
                or "latent" (the final latents, undecoded).
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, callback_kwargs)` after
                each step; may return `{"latents": ...}` to replace them.
            callback_on_step_end_tensor_inputs (`list`, defaults to `["latents"]`): tensors in `callback_kwargs`.
            guidance_channels (`int`, *optional*): guide only the first k prediction channels; 3 reproduces the
                original DiT's sampling (it guides 3 of 4 latent channels).
            guidance_interval (`(int, int)`, *optional*): guide only at timesteps `low <= t <= high`, conditional
                predictions elsewhere (Kynkäänniemi et al., 2024: guidance at high noise costs diversity and at low
                noise does little). (83, 579) is their interval sigma in (0.28, 5.42] on DiT's linear schedule.
            cache_interval (`int`, *optional*): feature caching (FORA, Selvaraju et al., 2024), off by default: the
                transformer's blocks compute their attention and MLP outputs at every `cache_interval`-th step only
                and reuse them in between, about `cache_interval`x less transformer work for an approximation
                (its effect on sample quality is in `benchmarks/RESULTS.md`). 1 or `None`: exact sampling.

        Returns:
            `ImagePipelineOutput` with `images`, or the tuple `(images,)`.

        Example:
            >>> from diffusers import DiffusionPipeline
            >>> import dit_pipelines  # registers the DiT classes with diffusers
            >>> pipe = DiffusionPipeline.from_pretrained("path/to/saved/pipeline")  # doctest: +SKIP
            >>> pipe("golden retriever", num_inference_steps=250).images[0].save("dog.png")  # doctest: +SKIP
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        ids = [i for i in self._class_ids(class_labels) for _ in range(num_images_per_prompt)]
        config = self.transformer.config
        height = config.sample_size * self.vae_scale_factor if height is None else height
        width = config.sample_size * self.vae_scale_factor if width is None else width
        shape = (len(ids), config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        self.check_inputs(
            height,
            width,
            guidance_scale,
            guidance_channels,
            guidance_interval,
            num_images_per_prompt,
            output_type,
            len(ids),
            generator,
            callback_on_step_end_tensor_inputs,
        )
        labels = torch.tensor(ids, device=self._execution_device)
        latents = self.denoise(
            shape,
            {"class_labels": labels},
            {"class_labels": torch.full_like(labels, self.transformer.num_classes)},  # the null class
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            latents=latents,
            eta=eta,
            guidance_channels=guidance_channels,
            guidance_interval=guidance_interval,
            cache_interval=cache_interval,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )

        if output_type == "latent":
            images = latents
        else:
            if self.vae is not None:
                latents = unscale_latents(latents, self.vae.config)
                images = self.vae.decode(latents.to(self.vae.dtype)).sample
            else:
                images = latents
            images = self.image_processor.postprocess(images.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
