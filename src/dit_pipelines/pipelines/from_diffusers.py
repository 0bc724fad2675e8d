"""diffusers' `DiTPipeline` (the layout of `facebook/DiT-XL-2-256`) as the parts of a `DiTImagePipeline`.

A diffusers DiT repo holds `model_index.json` (`"_class_name": "DiTPipeline"`, the ImageNet `id2label`), a
`transformer/` (`DiTTransformer2DModel`; repos made before diffusers 0.28 say `Transformer2DModel`), a `vae/`
(`AutoencoderKL`) and a `scheduler/`. Everything carries over: the transformer converted to a `DiTModel`
(`dit_pipelines.conversion.dit_from_diffusers`), the VAE, the class names, and the betas of the scheduler, on which
the paper's sampler replaces diffusers' (DDPM on 250 respaced steps with the learned variance, which diffusers'
`DiTPipeline` throws away). `DiTImagePipeline.from_pretrained` and `dit-pipelines convert` both load through here.

>>> from dit_pipelines import DiTImagePipeline
>>> pipe = DiTImagePipeline.from_pretrained("facebook/DiT-XL-2-256")  # doctest: +SKIP
>>> pipe.scheduler.config.timestep_respacing, pipe.scheduler.config.variance_type  # doctest: +SKIP
('250', 'learned_range')
>>> pipe.get_label_ids("white shark")  # doctest: +SKIP
[2]
"""

import json
import os
from typing import Optional

from diffusers import AutoencoderKL, DiTTransformer2DModel
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from ..conversion import dit_from_diffusers
from ..schedulers import DiTDDPMScheduler

DIFFUSERS_DIT_PIPELINE = "DiTPipeline"
#: Arguments of `from_pretrained` that say where and how to fetch files; passed on to every component's loader.
HUB_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
WEIGHT_ARGUMENTS = ("variant", "use_safetensors")
COMPONENTS = ("transformer", "scheduler", "vae", "id2label")
#: What a diffusers scheduler config says about the training chain; its sampling settings are not carried over.
CHAIN_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def dit_sampler(learn_sigma: bool, timestep_respacing: str = "250", **chain) -> DiTDDPMScheduler:
    """The sampler of the DiT paper (Peebles & Xie, 2023, §4): DDPM ancestral sampling on `timestep_respacing`
    respaced steps (Improved DDPM, Nichol & Dhariwal, 2021, §4), with the learned variance of a model that outputs
    one (Improved DDPM eq. 15, "learned_range"), else the fixed posterior variance ("fixed_small"). `chain` sets
    the training chain (`num_train_timesteps`, `beta_schedule`, ...; DiT's linear 1e-4..0.02 over 1000 steps by
    default).

    >>> scheduler = dit_sampler(learn_sigma=True)
    >>> scheduler.set_timesteps()
    >>> scheduler.config.variance_type, len(scheduler.timesteps), scheduler.timesteps[:2].tolist()
    ('learned_range', 250, [999, 995])
    """
    variance_type = "learned_range" if learn_sigma else "fixed_small"
    return DiTDDPMScheduler(timestep_respacing=timestep_respacing, variance_type=variance_type, **chain)


def diffusers_dit_model_index(path: str, **hub_arguments) -> Optional[dict]:
    """The `model_index.json` of `path` (a folder or a Hub repo id) if it holds a diffusers `DiTPipeline`, else
    `None`, also where there is no such file to read: `DiffusionPipeline.from_pretrained` then reports why."""
    try:
        if os.path.isdir(path):
            index_file = os.path.join(path, "model_index.json")
            if not os.path.isfile(index_file):
                return None
        else:
            index_file = hf_hub_download(str(path), "model_index.json", **hub_arguments)
        with open(index_file) as f:
            index = json.load(f)
    except (OSError, ValueError, EntryNotFoundError):  # not a repo id, no such repo or file, offline, not JSON
        return None
    return index if isinstance(index, dict) and index.get("_class_name") == DIFFUSERS_DIT_PIPELINE else None


def diffusers_dit_components(
    path: str, model_index: Optional[dict] = None, timestep_respacing: str = "250", **kwargs
) -> dict:
    """The `DiTImagePipeline` arguments (`transformer`, `scheduler`, `vae`, `id2label`) of a diffusers
    `DiTPipeline` at `path` (a folder or a Hub repo id), the transformer converted to a `DiTModel`, the scheduler
    `dit_sampler` on the saved scheduler's training chain. `model_index` is `path`'s, if already read.

    `kwargs` are `from_pretrained`'s: `cache_dir`, `force_download`, `proxies`, `local_files_only`, `token`,
    `revision`, `variant`, `use_safetensors`, `torch_dtype` (or `dtype`) for the transformer and the VAE, and any of
    the four components, which is then used instead of the saved one. Others are a `ValueError`."""
    allowed = (*HUB_ARGUMENTS, *WEIGHT_ARGUMENTS, "torch_dtype", "dtype", *COMPONENTS)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"Loading a diffusers DiTPipeline does not take {', '.join(unknown)}; it takes {', '.join(allowed)}."
        )
    hub = {k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs}
    model_index = model_index or diffusers_dit_model_index(path, **hub)
    if model_index is None:
        raise ValueError(f"{path} holds no diffusers DiTPipeline (no model_index.json with _class_name DiTPipeline).")
    dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
    weights = {**hub, **{k: kwargs[k] for k in WEIGHT_ARGUMENTS if k in kwargs}, "torch_dtype": dtype}

    parts = {k: kwargs[k] for k in COMPONENTS if k in kwargs}
    if "transformer" not in parts:
        diffusers_transformer = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer", **weights)
        parts["transformer"] = dit_from_diffusers(diffusers_transformer).eval()
    if "scheduler" not in parts:
        saved = DiTDDPMScheduler.load_config(path, subfolder="scheduler", **hub)
        chain = {k: saved[k] for k in CHAIN_KEYS if saved.get(k) is not None}
        parts["scheduler"] = dit_sampler(parts["transformer"].config.learn_sigma, timestep_respacing, **chain)
    if "vae" not in parts:
        has_vae = (model_index.get("vae") or [None, None])[1] is not None
        parts["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights) if has_vae else None
    parts.setdefault("id2label", model_index.get("id2label"))
    return parts


def load_pipeline(path: str, **kwargs):
    """`DiffusionPipeline.from_pretrained(path)`, except that a diffusers `DiTPipeline` comes converted, as a
    `DiTImagePipeline` with the paper's sampler: what `dit-pipelines sample` and `sample-batch` load."""
    from diffusers import DiffusionPipeline

    from .pipeline_dit_image import DiTImagePipeline

    hub = {k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs}
    if diffusers_dit_model_index(path, **hub) is not None:
        return DiTImagePipeline.from_pretrained(path, **kwargs)
    return DiffusionPipeline.from_pretrained(path, **kwargs)
