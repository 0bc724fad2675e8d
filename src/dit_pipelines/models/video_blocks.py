"""The blocks of the video DiT: how a block's self-attention mixes a clip's tokens (`Mixing`), and `VideoDiTBlock`."""

from enum import Enum
from typing import Dict, Optional, Tuple

import torch
from einops import rearrange
from torch import nn

from .attention import CrossAttention, SelfAttention
from .feature_cache import NO_CACHE, BlockCache
from .layers import MLP, modulate


class Mixing(str, Enum):
    """Which tokens of a clip (B, F·S, D) (F frames of S tokens) one self-attention sees."""

    SPACE = "space"  # the S tokens of each frame: (b f) s d
    TIME = "time"  # the F tokens of each location, temporal positions added: (b s) f d
    SPACE_THEN_TIME = "space_then_time"  # space, then a separately modulated and gated time attention (STDiT)
    FULL = "full"  # all F·S tokens: b (f s) d


#: `VideoDiTModel.attention_layout` -> the mixings of the blocks that one depth step adds
LAYOUT_MIXINGS: Dict[str, Tuple[Mixing, ...]] = {
    "interleaved": (Mixing.SPACE, Mixing.TIME),  # Latte, variant 1
    "factorized": (Mixing.SPACE_THEN_TIME,),  # STDiT
    "full": (Mixing.FULL,),  # CogVideoX-like
}


def attend(attn: SelfAttention, h: torch.Tensor, mixing: Mixing, frames: int, temporal_pos: torch.Tensor):
    """`attn` over the tokens `mixing` groups together, for h (B, F·S, D); returns (B, F·S, D). `temporal_pos` is
    (1, F, 1, D), or (1, F·S, D) for `Mixing.FULL` (one row per token, so that context parallelism can split it
    with the tokens)."""
    b, t, d = h.shape
    if mixing is Mixing.SPACE:  # frames are contiguous runs of tokens: a view
        return attn(h.view(b * frames, t // frames, d)).view(b, t, d)
    if mixing is Mixing.FULL:
        return attn(h + temporal_pos)
    if mixing is Mixing.TIME:
        timed = h.view(b, frames, t // frames, d) + temporal_pos  # (B, F, S, D)
        out = attn(rearrange(timed, "b f s d -> (b s) f d").contiguous())  # contiguous: one copy, then addmm
        return rearrange(out, "(b s) f d -> b (f s) d", b=b)
    raise ValueError(f"attend() takes a single mixing, not {mixing}.")


class VideoDiTBlock(nn.Module):
    """An adaLN-Zero block over a clip's tokens x (B, F·S, D): self-attention as `mixing` says, optional
    cross-attention to the text, MLP. A `Mixing.SPACE_THEN_TIME` block adds a temporal attention with its own
    modulation layer (`temporal_modulation`), so that `modulation` has the image DiT block's shape (6D rows) and the
    image layers can be frozen whole. All gates, and the cross-attention's output, start at zero: a new block is the
    identity."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        mixing: Mixing,
        cross_attention: bool,
        mlp_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.mixing = Mixing(mixing)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        temporal = self.mixing is Mixing.SPACE_THEN_TIME
        self.norm_temporal = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6) if temporal else None
        self.temporal_attn = SelfAttention(hidden_size, num_heads) if temporal else None
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6) if cross_attention else None
        self.cross_attn = CrossAttention(hidden_size, num_heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        # Last, in this order: a seeded model draws the same initial weights as when one layer held all 9D rows.
        self.modulation = nn.Linear(hidden_size, 6 * hidden_size)
        self.temporal_modulation = nn.Linear(hidden_size, 3 * hidden_size) if temporal else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        condition: torch.Tensor,
        frames: int,
        temporal_pos: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        cache: BlockCache = NO_CACHE,
        index: int = 0,
    ) -> torch.Tensor:
        # hidden_states: (B, F·S, D) tokens (named as diffusers' block hooks look them up); condition: (B, D);
        # temporal_pos: see `attend`; context: (B, L, D); context_mask: (B, L). With a `FeatureCache` the attention,
        # cross-attention and MLP outputs may come from an earlier step (FORA).
        x = hidden_states
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(condition)[:, None].chunk(
            6, -1
        )
        first = Mixing.SPACE if self.mixing is Mixing.SPACE_THEN_TIME else self.mixing

        def attention():
            return attend(self.attn, modulate(self.norm1(x), shift_msa, scale_msa), first, frames, temporal_pos)

        x = torch.addcmul(x, cache.fetch((index, "attn"), attention), gate_msa)  # the full tensor first: faster
        if self.temporal_attn is not None:
            shift_t, scale_t, gate_t = self.temporal_modulation(condition)[:, None].chunk(3, -1)

            def temporal_attention():
                h = modulate(self.norm_temporal(x), shift_t, scale_t)
                return attend(self.temporal_attn, h, Mixing.TIME, frames, temporal_pos)

            x = torch.addcmul(x, cache.fetch((index, "temporal_attn"), temporal_attention), gate_t)
        if self.cross_attn is not None:
            cross = cache.fetch(
                (index, "cross_attn"), lambda: self.cross_attn(self.norm_cross(x), context, context_mask)
            )
            x = x + cross
        mlp = cache.fetch((index, "mlp"), lambda: self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return torch.addcmul(x, mlp, gate_mlp)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        split_temporal_modulation(state_dict, prefix, self.modulation.in_features)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def split_temporal_modulation(state_dict: dict, prefix: str, hidden_size: int) -> None:
    """Convert, in place, a block saved before the temporal modulation had a layer of its own: its `modulation`
    had 9D rows (shift, scale, gate for attention, MLP, then temporal attention); rows 6D..9D become
    `temporal_modulation`. Blocks saved in the current layout are left as they are."""
    for name in ("weight", "bias"):
        key = f"{prefix}modulation.{name}"
        if key in state_dict and state_dict[key].shape[0] == 9 * hidden_size:
            rows = state_dict.pop(key)
            state_dict[key] = rows[: 6 * hidden_size].clone()
            state_dict[f"{prefix}temporal_modulation.{name}"] = rows[6 * hidden_size :].clone()
