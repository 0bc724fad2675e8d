"""The VAE of latent diffusion training and its on-disk latent cache (`--precompute_latents`): the posterior
N(mean, std²) of every image or clip, written once in shards by all processes (`sharded_cache.fill_cache`) and read
back a batch at a time, so that memory does not grow with the dataset.

    config = LatentConfig(vae="stabilityai/sd-vae-ft-ema", precompute_latents=True)
    vae = load_vae(config, accelerator.device)
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .config import option
from .latents import encode_posteriors
from .sharded_cache import Field, ShardedCache, fill_cache, module_fingerprint

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LatentConfig:
    """Which VAE, and whether its latents are encoded per batch or once into a cache."""

    vae: Optional[str] = option(None, "an AutoencoderKL folder or repo id: train on its latents")
    vae_subfolder: Optional[str] = option(None, "the VAE's sub-folder in that folder or repo ('vae' in pipelines)")
    vae_batch_size: int = option(32, "images or frames the VAE encodes at a time")
    precompute_latents: bool = option(False, "with a VAE: encode the data once into an on-disk cache")
    cache_dir: Optional[str] = option(None, "where the caches go (default: <output_dir>/cache); shareable by runs")
    latent_cache_dtype: str = option(
        "float32", "what the latent cache stores (float16 halves it)", choices=sorted(CACHE_DTYPES)
    )


def load_vae(config: LatentConfig, device) -> Optional[torch.nn.Module]:
    """The frozen `AutoencoderKL` of `config.vae` on `device`, or None without one."""
    if config.vae is None:
        return None
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(config.vae, subfolder=config.vae_subfolder)
    return vae.to(device).eval().requires_grad_(False)


def cache_root(config: LatentConfig, output_dir: str) -> str:
    import os

    return config.cache_dir or os.path.join(output_dir, "cache")


def vae_key(vae, config: LatentConfig) -> dict:
    """What a latent cache depends on besides the data: the VAE's weights and the stored precision."""
    return {"vae": module_fingerprint(vae), "dtype": config.latent_cache_dtype}


def fill_latent_cache(
    root: str,
    key: dict,
    num_samples: int,
    latent_shape: tuple,
    dtype: torch.dtype,
    encode_rows: Callable[[range], Dict[str, torch.Tensor]],
    accelerator,
    extra_fields: Optional[Dict[str, Field]] = None,
) -> ShardedCache:
    """A latent cache: field "latents" (num_samples, K, *latent_shape), K stacked posterior tensors per sample (mean
    and std, and those of the mirror image with flips), written by every process of `accelerator`."""
    fields = {"latents": Field(tuple(latent_shape), dtype), **(extra_fields or {})}
    return fill_cache(
        root,
        "latents",
        key,
        num_samples,
        fields,
        encode_rows,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        wait=accelerator.wait_for_everyone,
    )


def posterior_stack(vae, pixels: torch.Tensor, batch_size: int, flips: bool = False) -> torch.Tensor:
    """(N, K, C_latent, h, w) float32: the posterior mean and std of each of N images (N, C, H, W) in [-1, 1],
    then, with `flips`, those of its mirror image (K = 4; else 2), encoded `batch_size` at a time."""

    def batches(flipped):
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size]
            yield chunk.flip(-1) if flipped else chunk

    parts = encode_posteriors(vae, batches(False), vae.device)
    stacked = [parts["mean"], parts["std"]]
    if flips:
        mirrored = encode_posteriors(vae, batches(True), vae.device)
        stacked += [mirrored["mean"], mirrored["std"]]
    return torch.stack(stacked, dim=1)


def as_read(batch):
    """The collate function of datasets whose `__getitems__` returns whole batches: the batch as it is."""
    return batch


class CachedSamples(Dataset):
    """The samples of a `ShardedCache`, read a batch at a time: the DataLoader calls `__getitems__` with a batch
    of indices, which returns the batch itself ({field: (B, ...) tensor}, plus per-sample `columns` kept beside the
    cache, such as captions, as lists), and `collate_fn` passes it on. (One read into one buffer, where per-sample
    items and the default collate's `torch.stack` would copy every batch twice.)"""

    def __init__(self, cache: ShardedCache, columns: Optional[Dict[str, Sequence]] = None):
        self.cache, self.columns = cache, columns or {}

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, index):
        return {name: value[0] for name, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices):
        batch = self.cache.read(indices)
        batch.update({name: [column[int(i)] for i in indices] for name, column in self.columns.items()})
        return batch

    collate_fn = staticmethod(as_read)
