"""`DiTCacheMixin`: diffusers' `CacheMixin` (`enable_cache`, `disable_cache`, `cache_context`) for our models.

diffusers' cache hooks then work on them as on its own transformers: FirstBlockCache, MagCache, TaylorSeer,
PyramidAttentionBroadcast and FasterCache (see `models/block_registry.py` and `models/attention.py` for how the
hooks find the blocks and the attention). The pipelines open `cache_context` for every model call and expose
`current_timestep`, which PAB and FasterCache read:

Example:
    >>> from diffusers import FirstBlockCacheConfig
    >>> from dit_pipelines import DiTModel
    >>> model = DiTModel.from_preset("DiT-S/8", sample_size=16, num_classes=10, depth=2)
    >>> model.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    >>> model.is_cache_enabled
    True
    >>> model.disable_cache()
"""

import dataclasses

from diffusers.hooks import FasterCacheConfig
from diffusers.models.cache_utils import CacheMixin


class DiTCacheMixin(CacheMixin):
    """`CacheMixin`, with FasterCache told what it cannot guess about a model: which of its inputs hold the
    batched [unconditional; conditional] halves (`_guidance_batched_inputs`, besides diffusers' defaults; for the
    image DiT, `class_labels`) and how its output is laid out (`_output_format`: "BCHW" or "BCFHW"). The config is
    copied, not changed."""

    _guidance_batched_inputs: tuple = ()
    _output_format: str = "BCHW"

    def enable_cache(self, config) -> None:
        if isinstance(config, FasterCacheConfig):
            batched = tuple(config._unconditional_conditional_input_kwargs_identifiers)
            missing = tuple(name for name in self._guidance_batched_inputs if name not in batched)
            config = dataclasses.replace(
                config,
                tensor_format=self._output_format,
                _unconditional_conditional_input_kwargs_identifiers=[*batched, *missing],
            )
        super().enable_cache(config)
