"""Our transformer blocks in diffusers' registry of blocks, which FirstBlockCache and MagCache read to find a
block's `hidden_states` argument and which output is the hidden states.

The registry (`diffusers.hooks._helpers.TransformerBlockRegistry`) is private: diffusers registers its own blocks
there and offers no public route for other models' blocks. That is why `pyproject.toml` pins the diffusers minor
version this was tested with; `tests/test_cache_hooks.py` fails if the registry moves or changes.
"""

from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry


def register_blocks(*block_classes: type) -> None:
    """Register blocks whose forward takes `hidden_states` first and returns the new hidden states (no tuple, no
    encoder states of their own: the text context is read, never updated)."""
    for block_class in block_classes:
        TransformerBlockRegistry.register(
            model_class=block_class,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
        )
