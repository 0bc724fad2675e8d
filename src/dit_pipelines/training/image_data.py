"""Training inputs of class-conditional image DiTs: labelled images as [-1, 1] tensors, or VAE latents encoded per
batch or once and cached (`precompute_latents`), with random horizontal flips."""

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

from ..data.images import image_transform, label_index
from ..latents import signed_to_uint8, uint8_to_signed, vae_scale_factor
from .config import option
from .latents import encode_latents, encode_posteriors, sample_latents

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
    precompute_latents: bool = option(False, "with a VAE: encode the data once, posterior mean and std")


class LabelledImages(Dataset):
    """A `datasets` split as (image tensor in [-1, 1], class index) pairs. Datasets whose resized images fit in
    `PRELOAD_BYTES` are decoded and resized once into a uint8 tensor, so that a batch is a slice, not a loop."""

    def __init__(self, data, image_column, label_column, resolution, channels):
        self.data, self.image_column = data, image_column
        self.labels = [label_index(data, label_column)(v) for v in data[label_column]]
        self.transform = image_transform(resolution, channels)
        self.preloaded = None
        if len(data) * channels * resolution**2 <= PRELOAD_BYTES:
            self.preloaded = torch.stack([signed_to_uint8(self.transform(row[image_column])) for row in data])

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.preloaded is not None:
            pixels = uint8_to_signed(self.preloaded[i])
        else:
            pixels = self.transform(self.data[i][self.image_column])
        return {"pixels": pixels, "label": self.labels[i]}


class CachedLatents(Dataset):
    """Posterior means and standard deviations of the VAE for each image (and its mirror image)."""

    def __init__(self, cache: dict):
        self.cache = cache

    def __len__(self):
        return len(self.cache["label"])

    def __getitem__(self, i):
        return {key: value[i] for key, value in self.cache.items()}


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
        if "mean" in batch:  # cached latents: choose the mirror image, then sample the posterior
            mean, std = batch["mean"].to(device), batch["std"].to(device)
            if flip is not None:
                mean = torch.where(flip, batch["mean_flipped"].to(device), mean)
                std = torch.where(flip, batch["std_flipped"].to(device), std)
            return sample_latents(mean, std, self.vae.config), labels
        pixels = batch["pixels"].to(device)
        if flip is not None:
            pixels = torch.where(flip, pixels.flip(-1), pixels)
        return (pixels if self.vae is None else encode_latents(self.vae, pixels)), labels


def encode_all(images: LabelledImages, vae, device, batch_size: int = 64, flips: bool = False) -> dict:
    """The latent cache: posteriors of every image (and of its mirror image with `flips`) and the labels."""

    def batches(flipped: bool):
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([images[i]["pixels"] for i in range(start, min(start + batch_size, len(images)))])
            yield pixels.flip(-1) if flipped else pixels

    cache = {**encode_posteriors(vae, batches(False), device), "label": torch.tensor(images.labels)}
    if flips:
        mirrored = encode_posteriors(vae, batches(True), device)
        cache.update(mean_flipped=mirrored["mean"], std_flipped=mirrored["std"])
    return cache


def build_training_images(
    dataset, config: ImageDataConfig, vae, vae_name: Optional[str], patch_size: int, output_dir: str, accelerator
) -> TrainingImages:
    """Check the sizes against the patch grid and wrap the data for the training loop; with
    `config.precompute_latents`, encode it once on the main process into `output_dir` (the others wait and read)."""
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
    if vae is None or not config.precompute_latents:
        return TrainingImages(images, model_channels, grid, vae, config.random_flip)

    key = f"{dataset._fingerprint}-{vae_name}-{resolution}-{config.random_flip}"
    path = os.path.join(output_dir, f"latents-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt")
    if accelerator.is_main_process and not os.path.exists(path):
        os.makedirs(output_dir, exist_ok=True)
        torch.save(encode_all(images, vae, accelerator.device, flips=config.random_flip), path + ".tmp")
        os.replace(path + ".tmp", path)
    accelerator.wait_for_everyone()
    return TrainingImages(CachedLatents(torch.load(path)), model_channels, grid, vae, config.random_flip)
