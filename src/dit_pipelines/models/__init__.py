"""The transformers: the class-conditional image DiT, the spatio-temporal video DiT, their layers and presets."""

from .block_registry import register_blocks
from .dit_transformer import DiTBlock, DiTModel
from .feature_cache import FeatureCache
from .presets import DIT_PRESETS
from .video_blocks import VideoDiTBlock
from .video_dit import VideoDiTModel

register_blocks(DiTBlock, VideoDiTBlock)

__all__ = ["DiTModel", "DIT_PRESETS", "FeatureCache", "VideoDiTModel"]
