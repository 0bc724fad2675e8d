"""Diffusion Transformers as diffusers models, schedulers and pipelines, with the training utilities to train them on
your own data (`dit_pipelines.training`).

Importing the package registers its classes with diffusers, so that `diffusers.DiffusionPipeline.from_pretrained`
loads saved `DiTImagePipeline`s and `DiTTextToVideoPipeline`s (see `_register_with_diffusers`).
"""

import sys

import diffusers

from .models import DIT_PRESETS, ClassConditionalUNet, DiTModel, VideoDiTModel
from .pipelines import DiTImagePipeline, DiTTextToVideoPipeline
from .schedulers import (
    DiffusionLoss,
    DiTDDIMScheduler,
    DiTDDPMScheduler,
    GaussianDiffusion,
    timesteps_from_respacing,
)

__version__ = "0.1.0"

__all__ = [
    "ClassConditionalUNet",
    "DIT_PRESETS",
    "DiTDDIMScheduler",
    "DiTDDPMScheduler",
    "DiTImagePipeline",
    "DiTModel",
    "DiTTextToVideoPipeline",
    "DiffusionLoss",
    "GaussianDiffusion",
    "timesteps_from_respacing",
    "VideoDiTModel",
]


def _register_with_diffusers() -> None:
    """Make diffusers' loaders find our classes without `trust_remote_code`.

    - `DiffusionPipeline.from_pretrained` resolves the pipeline class as `getattr(diffusers, _class_name)`;
    - components are saved as `["dit_pipelines", ClassName]` once their `__module__` is the package itself, and a
      library visible as `diffusers.pipelines.<name>` is also accepted when loading by Hub repo id
      (diffusers issue #6563).
    """
    models = (DiTModel, VideoDiTModel, ClassConditionalUNet)
    for cls in (*models, DiTDDPMScheduler, DiTDDIMScheduler, DiTImagePipeline, DiTTextToVideoPipeline):
        cls.__module__ = __name__
    diffusers.DiTImagePipeline = DiTImagePipeline
    diffusers.DiTTextToVideoPipeline = DiTTextToVideoPipeline
    diffusers.pipelines.dit_pipelines = sys.modules[__name__]


_register_with_diffusers()
