"""Training inputs of text-to-video DiTs: clips decoded from a user's video files (`data.video_files`), as pixels or
VAE latents encoded per batch, or encoded once into the on-disk latent cache (`LatentConfig.precompute_latents`)."""

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.video_files import CLIP_STARTS, ClipSampling, VideoClips, collate_clips
from ..latents import uint8_to_signed, vae_scale_factor
from .config import option
from .latent_cache import CACHE_DTYPES, CachedSamples, LatentConfig, cache_root, fill_latent_cache, vae_key
from .latents import clip_posteriors, sample_latents

OPTIONAL_CAPTION_COLUMNS = ("caption_parts", "image_caption")  # used where the data has them
logger = logging.getLogger("dit_pipelines.training")


@dataclass
class VideoDataConfig:
    """Which videos and captions, and how clips are cut from them."""

    train_data_dir: Optional[str] = option(None, "a videofolder: video files plus metadata.jsonl (file_name, caption)")
    dataset_name: Optional[str] = option(None, "a datasets name or repo id, or a save_to_disk folder")
    dataset_config: Optional[str] = option(None, "the datasets config name")
    split: str = option("train", "the split to train on")
    video_column: str = option("video", "the column of videos (files, or decoded (F, H, W[, C]) uint8 frames)")
    caption_column: str = option("caption", "the column of captions")
    num_frames: int = option(16, "frames per training clip")
    frame_stride: int = option(1, "take every k-th frame")
    fps: Optional[float] = option(None, "instead of --frame_stride: the stride nearest this frame rate")
    clip_start: str = option("random", "where clips start (random: anew each epoch)", choices=list(CLIP_STARTS))
    resolution: Optional[int] = option(None, "square frames of this side (resized, then centre-cropped)")
    height: Optional[int] = option(None, "frame height (with --width; default: --resolution or the data's)")
    width: Optional[int] = option(None, "frame width")
    channels: Optional[int] = option(None, "3 (RGB) or 1 (grayscale); default: the VAE's, else 3", choices=[1, 3])
    max_train_samples: Optional[int] = option(None, "use the first N videos only")
    on_bad_clip: str = option(
        "skip", "videos too short or undecodable: skip (and log) or error", choices=["skip", "error"]
    )


@dataclass
class TrainingClips:
    """The dataset the loop iterates and how a batch of it becomes the model input x_0 (B, C, F, h, w)."""

    dataset: Dataset
    channels: int  # model input channels
    height: int  # model input size (latent or pixel)
    width: int
    num_frames: int
    vae: Optional[torch.nn.Module]
    vae_batch_size: int = 32

    def to_model_input(self, batch, device) -> torch.Tensor:
        """x_0 of a batch: a posterior sample of the cached latents (global RNG, which checkpoints save), or the
        clips' pixels, encoded now with a VAE."""
        if "latents" in batch:
            cached = batch["latents"].to(device, torch.float32)  # (B, 2, C, F, h, w)
            return sample_latents(cached[:, 0], cached[:, 1], self.vae.config)
        x = uint8_to_signed(batch["video"].to(device))  # (B, C, F, H, W)
        if self.vae is None:
            return x
        # contiguous, like the cached path's x_0: the loss's randn_like(x_0) follows memory order
        return sample_latents(*clip_posteriors(self.vae, x, self.vae_batch_size), self.vae.config).contiguous()


def build_training_clips(
    data,
    config: VideoDataConfig,
    latents: LatentConfig,
    vae,
    patch_size: int,
    seed: int,
    output_dir: str,
    accelerator,
    num_workers: int = 0,
) -> TrainingClips:
    """The clips of `data` (from `load_captioned_videos`) for training, checked against the VAE and the patch grid;
    with `latents.precompute_latents` (and a VAE), encoded once into the latent cache. A cached clip is the one
    epoch 0 cuts (with a random start: one draw per video, from the seed)."""
    extra = tuple(c for c in OPTIONAL_CAPTION_COLUMNS if c in data.column_names)
    frames = dict(num_frames=config.num_frames, frame_stride=config.frame_stride, fps=config.fps)
    probing = ClipSampling(height=1, width=1, **frames)  # which videos are long enough depends on frames alone
    clips = VideoClips(
        data, probing, config.video_column, config.caption_column, extra, config.on_bad_clip, num_workers
    )
    stored_height, stored_width, stored_channels = clips.stored_format()
    channels = config.channels or (vae.config.in_channels if vae is not None else stored_channels)
    if vae is not None and vae.config.in_channels != channels:
        raise ValueError(f"The VAE takes {vae.config.in_channels}-channel frames; --channels is {channels}.")
    if (config.height is None) != (config.width is None):
        raise ValueError("Pass --height with --width (or --resolution for square frames).")
    height = config.height or config.resolution or stored_height
    width = config.width or config.resolution or stored_width
    clips.sampling = sampling = ClipSampling(
        height=height, width=width, clip_start=config.clip_start, channels=channels, seed=seed, **frames
    )
    factor = vae_scale_factor(vae)
    if height % (factor * patch_size) or width % (factor * patch_size):
        raise ValueError(
            f"Frames of {height}x{width} are not a whole grid of {patch_size}x{patch_size} patches of the VAE's "
            f"{factor}x-downsampled latents: pick sides that are multiples of {factor * patch_size}."
        )
    model_channels = vae.config.latent_channels if vae is not None else channels
    shape = dict(channels=model_channels, height=height // factor, width=width // factor, num_frames=config.num_frames)
    if vae is None or not latents.precompute_latents:
        return TrainingClips(clips, vae=vae, vae_batch_size=latents.vae_batch_size, **shape)

    key = {
        "kind": "clip posteriors",
        "dataset": data._fingerprint,
        "video_column": config.video_column,
        "videos": len(clips),
        "sampling": {k: v for k, v in vars(sampling).items() if k != "seed" or sampling.clip_start == "random"},
        **vae_key(vae, latents),
    }

    def encode_rows(rows):
        loader = DataLoader(
            Subset(clips, list(rows)),
            batch_size=latents.vae_batch_size,
            num_workers=num_workers,
            collate_fn=collate_clips,
            generator=torch.Generator(),  # a loader draws its workers' seed: never from the global RNG of the run
        )
        posteriors = [clip_posteriors(vae, uint8_to_signed(batch["video"]), latents.vae_batch_size) for batch in loader]
        mean, std = (torch.cat([p[k] for p in posteriors]).cpu() for k in (0, 1))
        return {"latents": torch.stack([mean, std], dim=1)}

    if sampling.clip_start == "random":
        logger.warning("The latent cache holds one clip a video (epoch 0's random start): starts no longer vary.")
    latent_shape = (2, model_channels, config.num_frames, height // factor, width // factor)
    dtype = CACHE_DTYPES[latents.latent_cache_dtype]
    cache = fill_latent_cache(
        cache_root(latents, output_dir), key, len(clips), latent_shape, dtype, encode_rows, accelerator
    )
    columns = {name: ClipColumn(clips, name) for name in (config.caption_column, *extra)}
    dataset = CachedSamples(cache, {("caption" if k == config.caption_column else k): v for k, v in columns.items()})
    return TrainingClips(dataset, vae=vae, vae_batch_size=latents.vae_batch_size, **shape)


class ClipColumn:
    """A column of the clips' rows (the videos that make clips), indexed like the clips."""

    def __init__(self, clips: VideoClips, column: str):
        self.values = clips.data.select_columns([column])
        self.rows, self.column = clips.rows, column

    def __getitem__(self, index: int):
        return self.values[int(self.rows[index])][self.column]


def every_caption(data, caption_column: str = "caption") -> list:
    """Every caption a step can train with, sorted: whole captions, their parts (`caption_parts`, a list a row) and
    the frames' captions (`image_caption`), where the data has those columns."""
    captions = set(data[caption_column])
    if "caption_parts" in data.column_names:
        captions.update(part for row in data["caption_parts"] for part in row)
    if "image_caption" in data.column_names:
        captions.update(data["image_caption"])
    return sorted(captions)
