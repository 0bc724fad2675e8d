from .dit_transformer import DiTModel
from .presets import DIT_PRESETS

__all__ = ["DiTModel", "DIT_PRESETS"]
