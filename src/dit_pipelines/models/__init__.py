from .dit_transformer import DiTModel
from .presets import DIT_PRESETS
from .video_dit import VideoDiTModel

__all__ = ["DiTModel", "DIT_PRESETS", "VideoDiTModel"]
