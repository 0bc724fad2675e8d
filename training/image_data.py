"""Training inputs for `train_dit.py`: images as [-1, 1] tensors, or VAE latents (encoded per batch, or once and
cached with `--precompute_latents`)."""

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

from dit_pipelines.data import image_transform
from dit_pipelines.data.images import label_index
from dit_pipelines.pipelines.common import scale_latents, vae_scale_factor

PRELOAD_BYTES = 2 << 30  # datasets whose resized images fit in 2 GiB are decoded once and kept in memory


class LabelledImages(Dataset):
    """A `datasets` split as (image tensor in [-1, 1], class index) pairs. Small datasets (MNIST: 39 MB) are
    decoded and resized once into a uint8 tensor, which makes a batch a slice instead of a loop over rows."""

    def __init__(self, data, image_column, label_column, resolution, channels):
        self.data, self.image_column = data, image_column
        self.labels = [label_index(data, label_column)(v) for v in data[label_column]]
        self.transform = image_transform(resolution, channels)
        self.preloaded = None
        if len(data) * channels * resolution**2 <= PRELOAD_BYTES:
            to_uint8 = [((self.transform(row[image_column]) + 1) * 127.5).round().to(torch.uint8) for row in data]
            self.preloaded = torch.stack(to_uint8)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.preloaded is not None:
            pixels = self.preloaded[i].float() / 127.5 - 1.0
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
class TrainingData:
    dataset: Dataset
    channels: int  # model input channels
    sample_size: int  # model input side
    vae: Optional[torch.nn.Module]
    random_flip: bool

    def to_model_input(self, batch, device):
        """(x_0, labels) for a training step. Flips and latent samples draw from the global RNG, which checkpoints
        save, so a resumed run draws what an uninterrupted one would."""
        labels = batch["label"].to(device)
        if "mean" in batch:  # cached latents: choose the mirror image, then sample the posterior
            flip = (torch.rand(labels.shape[0], device=device) < 0.5) if self.random_flip else None
            mean, std = batch["mean"].to(device), batch["std"].to(device)
            if flip is not None:
                mean = torch.where(flip[:, None, None, None], batch["mean_flipped"].to(device), mean)
                std = torch.where(flip[:, None, None, None], batch["std_flipped"].to(device), std)
            return scale_latents(mean + std * torch.randn_like(mean), self.vae.config), labels
        pixels = batch["pixels"].to(device)
        if self.random_flip:
            flip = torch.rand(pixels.shape[0], device=device) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        if self.vae is None:
            return pixels, labels
        with torch.no_grad():
            return scale_latents(self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.sample().float(),
                                 self.vae.config), labels  # fmt: skip


def encode_all(images: LabelledImages, vae, device, batch_size: int = 64, flips: bool = False) -> dict:
    cache = {"mean": [], "std": [], "label": torch.tensor(images.labels)}
    if flips:
        cache.update(mean_flipped=[], std_flipped=[])
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([images[i]["pixels"] for i in range(start, min(start + batch_size, len(images)))])
            for suffix, x in [("", pixels)] + ([("_flipped", pixels.flip(-1))] if flips else []):
                dist = vae.encode(x.to(device, vae.dtype)).latent_dist
                cache["mean" + suffix].append(dist.mean.float().cpu())
                cache["std" + suffix].append(dist.std.float().cpu())
    return {k: torch.cat(v) if isinstance(v, list) else v for k, v in cache.items()}


def build_training_data(dataset, args, vae, patch_size: int, accelerator) -> TrainingData:
    """Check the sizes against the patch grid and wrap the data for the training loop."""
    first = dataset[0][args.image_column]
    channels = 1 if first.mode in ("L", "1", "I", "I;16", "F") else 3
    resolution = args.resolution or min(first.size)
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
    images = LabelledImages(dataset, args.image_column, args.label_column, resolution, channels)
    model_channels = vae.config.latent_channels if vae is not None else channels
    if vae is None or not args.precompute_latents:
        return TrainingData(images, model_channels, grid, vae, args.random_flip)

    # Encode once on the main process, cached in the output folder; the others wait and read it.
    key = hashlib.sha1(f"{dataset._fingerprint}-{args.vae}-{resolution}-{args.random_flip}".encode()).hexdigest()[:12]
    path = os.path.join(args.output_dir, f"latents-{key}.pt")
    if accelerator.is_main_process and not os.path.exists(path):
        os.makedirs(args.output_dir, exist_ok=True)
        torch.save(encode_all(images, vae, accelerator.device, flips=args.random_flip), path + ".tmp")
        os.replace(path + ".tmp", path)
    accelerator.wait_for_everyone()
    return TrainingData(CachedLatents(torch.load(path)), model_channels, grid, vae, args.random_flip)
