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

from diffusers.hooks import FasterCacheConfig, PyramidAttentionBroadcastConfig
from diffusers.models.cache_utils import CacheMixin

#: the config fields naming which attention modules PyramidAttentionBroadcast and FasterCache treat as which kind
IDENTIFIER_FIELDS = {
    "spatial": "spatial_attention_block_identifiers",
    "temporal": "temporal_attention_block_identifiers",
    "cross": "cross_attention_block_identifiers",
}


class DiTCacheMixin(CacheMixin):
    """`CacheMixin`, with the attention hooks told what they cannot guess about a model (the config is copied, not
    changed):

    - PyramidAttentionBroadcast and FasterCache find spatial, temporal and cross-attention by name patterns made for
      diffusers' models (`temporal_transformer_blocks`): left at their defaults, they get the model's own
      (`attention_identifiers()`), so that a temporal skip range reaches the temporal attentions;
    - FasterCache learns which inputs hold the batched [unconditional; conditional] halves
      (`_guidance_batched_inputs`, besides diffusers' defaults: `class_labels`) and how the output is laid out
      (`_output_format`: "BCHW" or "BCFHW")."""

    _guidance_batched_inputs: tuple = ()
    _output_format: str = "BCHW"

    def attention_identifiers(self) -> dict:
        """{"spatial" | "temporal" | "cross": [regex, ...]}: which attention modules are of which kind."""
        raise NotImplementedError

    def enable_cache(self, config) -> None:
        if isinstance(config, (PyramidAttentionBroadcastConfig, FasterCacheConfig)):
            defaults, ours = type(config)(), self.attention_identifiers()
            config = dataclasses.replace(
                config,
                **{
                    field: tuple(ours[kind])
                    for kind, field in IDENTIFIER_FIELDS.items()
                    if hasattr(config, field) and getattr(config, field) == getattr(defaults, field)
                },
            )
        if isinstance(config, FasterCacheConfig):
            batched = tuple(config._unconditional_conditional_input_kwargs_identifiers)
            missing = tuple(name for name in self._guidance_batched_inputs if name not in batched)
            config = dataclasses.replace(
                config,
                tensor_format=self._output_format,
                _unconditional_conditional_input_kwargs_identifiers=[*batched, *missing],
            )
        super().enable_cache(config)
