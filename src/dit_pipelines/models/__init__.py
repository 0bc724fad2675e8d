"""The transformers: the class-conditional image DiT, the spatio-temporal video DiT, their layers and presets."""

from .dit_transformer import DiTModel
from .feature_cache import FeatureCache
from .presets import DIT_PRESETS
from .video_dit import VideoDiTModel

__all__ = ["DiTModel", "DIT_PRESETS", "FeatureCache", "VideoDiTModel"]
