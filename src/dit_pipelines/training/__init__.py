"""What every training script shares: the typed configuration, the Accelerate loop with exact resume, the sampler,
checkpoints, latent encoding and caching, and conditioning dropout for guidance.

    from dit_pipelines.training import TrainingConfig, add_training_arguments, make_accelerator, train
"""

from .adapters import AdapterConfig, add_lora_adapter, has_lora_adapter, save_lora_adapter
from .captions import CaptionEncoder, TextEmbeddingCache, load_text_encoder
from .checkpoints import checkpoints, read_state, resolve_resume_path, save_checkpoint
from .conditioning import drop_labels, training_caption_ids, training_captions
from .config import (
    HubConfig,
    ObjectiveConfig,
    OptimizationConfig,
    RunConfig,
    TrainingConfig,
    add_arguments,
    add_training_arguments,
    from_arguments,
    option,
)
from .image_data import ImageDataConfig, TrainingImages, build_training_images
from .latent_cache import CachedSamples, LatentConfig, load_vae
from .latents import (
    clip_posteriors,
    clips_first,
    encode_latents,
    encode_posteriors,
    frames_first,
    sample_latents,
)
from .loop import make_accelerator, noise_scheduler_for, sampling_scheduler_for, save_training_args, train
from .sampler import ShardedEpochSampler
from .sharded_cache import Field, ShardedCache, fill_cache, module_fingerprint
from .video_data import TrainingClips, VideoDataConfig, build_training_clips, every_caption

__all__ = [
    "AdapterConfig",
    "add_lora_adapter",
    "has_lora_adapter",
    "save_lora_adapter",
    "CachedSamples",
    "CaptionEncoder",
    "TextEmbeddingCache",
    "TrainingClips",
    "VideoDataConfig",
    "build_training_clips",
    "every_caption",
    "training_captions",
    "Field",
    "LatentConfig",
    "ShardedCache",
    "fill_cache",
    "load_vae",
    "module_fingerprint",
    "HubConfig",
    "ImageDataConfig",
    "ObjectiveConfig",
    "OptimizationConfig",
    "RunConfig",
    "ShardedEpochSampler",
    "TrainingConfig",
    "TrainingImages",
    "add_arguments",
    "add_training_arguments",
    "build_training_images",
    "checkpoints",
    "clips_first",
    "clip_posteriors",
    "drop_labels",
    "encode_latents",
    "encode_posteriors",
    "frames_first",
    "from_arguments",
    "load_text_encoder",
    "make_accelerator",
    "noise_scheduler_for",
    "option",
    "read_state",
    "resolve_resume_path",
    "sample_latents",
    "sampling_scheduler_for",
    "save_checkpoint",
    "save_training_args",
    "train",
    "training_caption_ids",
]
