"""The transformers: the class-conditional image DiT, the spatio-temporal video DiT, their layers and presets."""

from .block_registry import register_blocks
from .dit_blocks import BLOCK_CLASSES, BLOCK_TYPES
from .dit_transformer import DiTModel
from .feature_cache import FeatureCache
from .presets import DIT_PRESETS
from .unet_baseline import ClassConditionalUNet
from .video_blocks import VideoDiTBlock
from .video_dit import VideoDiTModel

register_blocks(*BLOCK_CLASSES.values(), VideoDiTBlock)

__all__ = ["BLOCK_TYPES", "ClassConditionalUNet", "DiTModel", "DIT_PRESETS", "FeatureCache", "VideoDiTModel"]
