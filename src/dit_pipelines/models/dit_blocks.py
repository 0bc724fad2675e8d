"""The four DiT block designs of Peebles & Xie (2023), §3.2 and Fig. 3, which `DiTModel(block_type=...)` chooses.

- `"adaln_zero"`: LayerNorm shift and scale regressed from t + c, each residual branch gated by α, the maps
  zero-initialised so that each block starts as the identity (a 6D adaLN map a block);
- `"adaln"`: the same shift and scale, no gates, standard initialisation (a 4D map);
- `"cross_attention"`: a cross-attention layer after the self-attention, over the two embeddings [t, c] as a
  length-2 sequence (about 15% more Gflops at XL/2);
- `"in_context"`: t and c appended to the patch tokens as two more tokens, dropped after the last block.

Every block is called as `block(hidden_states, condition, cache, index)`: `condition` is SiLU(t + c) (N, D) for the
adaLN designs, the (N, 2, D) sequence [t, c] for cross-attention, and None in context (the tokens carry it). The
non-adaptive designs use standard LayerNorms with their own scale and shift, as a ViT does.

>>> import torch
>>> block = BLOCK_CLASSES["cross_attention"](hidden_size=32, num_heads=4, mlp_ratio=4.0, mlp_norm_eps=1e-6)
>>> block(torch.randn(2, 10, 32), torch.randn(2, 2, 32)).shape
torch.Size([2, 10, 32])
"""

from typing import Dict, Optional

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention
from .feature_cache import NO_CACHE, BlockCache
from .layers import MLP, modulate

BLOCK_TYPES = ("adaln_zero", "adaln", "cross_attention", "in_context")


class DiTBlock(nn.Module):
    """An adaLN-Zero block (DiT §3.2, Fig. 3). `modulation` maps the shared conditioning to shift, scale and gate
    for the attention and the MLP; with its weights zero, the block is the identity."""

    modulation_chunks = 6  # shift, scale and gate, before the attention and before the MLP

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        self.modulation = nn.Linear(hidden_size, self.modulation_chunks * hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, condition: torch.Tensor, cache: BlockCache = NO_CACHE, index: int = 0
    ) -> torch.Tensor:
        # hidden_states: (N, T, D) tokens (named as diffusers' block hooks look them up); condition: (N, D), the SiLU
        # of the timestep + class embedding. With a `FeatureCache` the attention and MLP outputs may come from an
        # earlier step (FORA); the gates are always this step's.
        x = hidden_states
        modulation = self.modulation(condition)[:, None]  # (N, 1, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        attn = cache.fetch((index, "attn"), lambda: self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        x = torch.addcmul(x, attn, gate_msa)  # x + attn * gate: the full tensor first is ~4x faster on a CPU
        mlp = cache.fetch((index, "mlp"), lambda: self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return torch.addcmul(x, mlp, gate_mlp)


class AdaLNBlock(DiTBlock):
    """An adaLN block: the adaLN-Zero block without its gates α (4D modulation: shift and scale before the attention
    and before the MLP), initialised like any linear layer rather than to zero (`DiTModel.initialize_weights`)."""

    modulation_chunks = 4  # shift and scale, before the attention and before the MLP

    def forward(
        self, hidden_states: torch.Tensor, condition: torch.Tensor, cache: BlockCache = NO_CACHE, index: int = 0
    ) -> torch.Tensor:
        x = hidden_states
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.modulation(condition)[:, None].chunk(4, dim=-1)
        x = x + cache.fetch((index, "attn"), lambda: self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return x + cache.fetch((index, "mlp"), lambda: self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class CrossAttentionBlock(nn.Module):
    """A ViT block with a cross-attention layer between the self-attention and the MLP, attending to the
    conditioning sequence [t, c] (N, 2, D)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=mlp_norm_eps)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))

    def forward(
        self, hidden_states: torch.Tensor, condition: torch.Tensor, cache: BlockCache = NO_CACHE, index: int = 0
    ) -> torch.Tensor:
        x = hidden_states
        x = x + cache.fetch((index, "attn"), lambda: self.attn(self.norm1(x)))
        x = x + cache.fetch((index, "cross"), lambda: self.cross_attn(self.norm_cross(x), condition))
        return x + cache.fetch((index, "mlp"), lambda: self.mlp(self.norm2(x)))


class InContextBlock(nn.Module):
    """A plain ViT block; the conditioning travels as two of its tokens (`condition` is unused)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=mlp_norm_eps)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))

    def forward(
        self,
        hidden_states: torch.Tensor,
        condition: Optional[torch.Tensor] = None,
        cache: BlockCache = NO_CACHE,
        index: int = 0,
    ) -> torch.Tensor:
        x = hidden_states
        x = x + cache.fetch((index, "attn"), lambda: self.attn(self.norm1(x)))
        return x + cache.fetch((index, "mlp"), lambda: self.mlp(self.norm2(x)))


BLOCK_CLASSES: Dict[str, type] = dict(
    zip(BLOCK_TYPES, (DiTBlock, AdaLNBlock, CrossAttentionBlock, InContextBlock), strict=True)
)


def block_class(block_type: str) -> type:
    """The block class of `block_type`, or a `ValueError` naming the four."""
    if block_type not in BLOCK_CLASSES:
        raise ValueError(f"Unknown block_type {block_type!r}; choose one of {', '.join(map(repr, BLOCK_TYPES))}.")
    return BLOCK_CLASSES[block_type]
