"""Training inputs of class-conditional image DiTs: labelled images as [-1, 1] tensors, or VAE latents encoded per
batch or once into the on-disk latent cache (`LatentConfig.precompute_latents`), with random horizontal flips."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

from ..data.images import image_transform, label_index
from ..latents import signed_to_uint8, uint8_to_signed, vae_scale_factor
from .config import option
from .latent_cache import (
    CACHE_DTYPES,
    CachedSamples,
    LatentConfig,
    cache_root,
    fill_latent_cache,
    posterior_stack,
    vae_key,
)
from .latents import encode_latents, sample_latents
from .sharded_cache import Field

PRELOAD_BYTES = 2 << 30  # datasets whose resized images fit in 2 GiB are decoded once and kept in memory


@dataclass
class ImageDataConfig:
    """Which images, at what size."""

    dataset: str = option(None, "an image folder (class = sub-folder), a save_to_disk folder or a datasets name")
    dataset_config: Optional[str] = option(None, "the datasets config name")
    split: str = option("train", "the split to train on")
    image_column: str = option("image", "the column of images")
    label_column: str = option("label", "the column of class labels")
    resolution: Optional[int] = option(None, "training image size (default: the data's)")
    random_flip: bool = option(False, "flip images horizontally at random (DiT does on ImageNet)")
    max_train_samples: Optional[int] = option(None, "use the first N samples only")


class LabelledImages(Dataset):
    """A `datasets` split as (image tensor in [-1, 1], class index) pairs. Datasets whose resized images fit in
    `PRELOAD_BYTES` are decoded and resized once into a uint8 tensor, so that a batch is a slice, not a loop."""

    def __init__(self, data, image_column, label_column, resolution, channels):
        self.data, self.image_column = data, image_column
        to_index = label_index(data, label_column)  # once: it reads the features (a deep copy) and the labels
        self.labels = [to_index(v) for v in data[label_column]]
        self.transform = image_transform(resolution, channels)
        self.preloaded = None
        if len(data) * channels * resolution**2 <= PRELOAD_BYTES:
            # in batches of rows, the image column alone: `datasets` formats rows one by one at ~0.5 ms each
            batches = data.select_columns([image_column]).iter(batch_size=1000)
            images = (image for batch in batches for image in batch[image_column])
            self.preloaded = torch.stack([signed_to_uint8(self.transform(image)) for image in images])

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.preloaded is not None:
            pixels = uint8_to_signed(self.preloaded[i])
        else:
            pixels = self.transform(self.data[i][self.image_column])
        return {"pixels": pixels, "label": self.labels[i]}


@dataclass
class TrainingImages:
    """The dataset the loop iterates and how a batch of it becomes the model input."""

    dataset: Dataset
    channels: int  # model input channels
    sample_size: int  # model input side
    vae: Optional[torch.nn.Module]
    random_flip: bool

    def to_model_input(self, batch, device):
        """(x_0, labels) for a training step. Flips and latent samples draw from the global RNG, which checkpoints
        save, so a resumed run draws what an uninterrupted one would."""
        labels = batch["label"].to(device)
        flip = (torch.rand(labels.shape[0], device=device) < 0.5)[:, None, None, None] if self.random_flip else None
        if "latents" in batch:  # cached posteriors (B, 2 or 4, C, h, w): choose the mirror image, then sample
            cached = batch["latents"].to(device, torch.float32)
            mean, std = cached[:, 0], cached[:, 1]
            if flip is not None:
                mean, std = torch.where(flip, cached[:, 2], mean), torch.where(flip, cached[:, 3], std)
            return sample_latents(mean, std, self.vae.config), labels
        pixels = batch["pixels"].to(device)
        if flip is not None:
            pixels = torch.where(flip, pixels.flip(-1), pixels)
        return (pixels if self.vae is None else encode_latents(self.vae, pixels)), labels


def build_training_images(
    dataset, config: ImageDataConfig, latents: LatentConfig, vae, patch_size: int, output_dir: str, accelerator
) -> TrainingImages:
    """Check the sizes against the patch grid and wrap the data for the training loop; with
    `latents.precompute_latents`, encode it once into the on-disk latent cache (every process its own shards)."""
    first = dataset[0][config.image_column]
    channels = 1 if first.mode in ("L", "1", "I", "I;16", "F") else 3
    resolution = config.resolution or min(first.size)
    factor = vae_scale_factor(vae)
    grid = resolution // factor
    if resolution % factor or grid < patch_size or grid % patch_size:
        raise ValueError(
            f"Images of {resolution}x{resolution} give a {grid}x{grid} model input (VAE factor {factor}), which is not "
            f"a whole grid of {patch_size}x{patch_size} patches: pick --resolution as a multiple of "
            f"{factor * patch_size}, at least {factor * patch_size}."
        )
    if vae is not None and vae.config.in_channels != channels:
        channels = vae.config.in_channels  # e.g. grayscale data through an RGB VAE
    images = LabelledImages(dataset, config.image_column, config.label_column, resolution, channels)
    model_channels = vae.config.latent_channels if vae is not None else channels
    if vae is None or not latents.precompute_latents:
        return TrainingImages(images, model_channels, grid, vae, config.random_flip)

    key = {
        "kind": "image posteriors",
        "dataset": dataset._fingerprint,
        "resolution": resolution,
        "channels": channels,
        "flips": config.random_flip,
        **vae_key(vae, latents),
    }
    stacked = 4 if config.random_flip else 2

    def encode_rows(rows):
        pixels = torch.stack([images[i]["pixels"] for i in rows])
        stack = posterior_stack(vae, pixels, latents.vae_batch_size, flips=config.random_flip)
        return {"latents": stack, "label": torch.tensor([images.labels[i] for i in rows])}

    cache = fill_latent_cache(
        cache_root(latents, output_dir),
        key,
        len(images),
        (stacked, model_channels, grid, grid),
        CACHE_DTYPES[latents.latent_cache_dtype],
        encode_rows,
        accelerator,
        extra_fields={"label": Field((), torch.int64)},
    )
    return TrainingImages(CachedSamples(cache), model_channels, grid, vae, config.random_flip)
