"""The DiTs' attention as diffusers attention modules: `SelfAttention` and `CrossAttention` are
`AttentionModuleMixin`s whose processor, `DiTAttnProcessor`, calls diffusers' `dispatch_attention_fn`.

Being diffusers attention is what lets diffusers' machinery reach them: `model.set_attention_backend("_native_math")`
picks the kernel, PyramidAttentionBroadcast and FasterCache hook them, and context parallelism (`_cp_plan`) runs
the self-attention as Ulysses all-to-alls. The weights keep the names they always had (`qkv`, `proj`; `q`, `kv`,
`proj`), so saved models load unchanged.

Example:
    >>> import torch
    >>> from dit_pipelines.models.attention import SelfAttention
    >>> attn = SelfAttention(64, num_heads=4)
    >>> attn(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    >>> attn.processor._attention_backend = "_native_math"  # what `model.set_attention_backend` sets
    >>> attn(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
"""

from typing import Optional, Tuple

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn


class DiTAttnProcessor:
    """Attention through `dispatch_attention_fn` on (B, S, H, Dh) queries, keys and values: the backend that
    `set_attention_backend` chose (None: PyTorch's `scaled_dot_product_attention`), and under context parallelism
    the parallel config for self-attention. Cross-attention attends from this process's tokens to the whole text,
    which every process holds, so it needs no exchange (as in diffusers' Wan)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "SelfAttention | CrossAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        n, t, d = hidden_states.shape
        query, key, value = attn.query_key_value(hidden_states, encoder_hidden_states)  # 3 x (N, S, H, Dh)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (N, 1, 1, L)
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config if encoder_hidden_states is None else None,
        )
        return attn.proj(out.reshape(n, t, d))


class SelfAttention(nn.Module, AttentionModuleMixin):
    """Multi-head self-attention over tokens (N, T, D) with one fused QKV projection."""

    _default_processor_cls = DiTAttnProcessor
    _available_processors = [DiTAttnProcessor]
    is_cross_attention = False

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = self.heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.set_processor(DiTAttnProcessor())

    def query_key_value(self, hidden_states: torch.Tensor, encoder_hidden_states=None) -> Tuple[torch.Tensor, ...]:
        n, t, d = hidden_states.shape
        return self.qkv(hidden_states).view(n, t, 3, self.heads, d // self.heads).unbind(2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.processor(self, hidden_states)


class CrossAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention from tokens (N, T, D) to a context (N, L, D); context positions where `context_mask`
    (N, L) is 0 are ignored (padding)."""

    _default_processor_cls = DiTAttnProcessor
    _available_processors = [DiTAttnProcessor]
    is_cross_attention = True

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = self.heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.set_processor(DiTAttnProcessor())

    def query_key_value(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor):
        n, t, d = hidden_states.shape
        h = self.heads
        query = self.q(hidden_states).view(n, t, h, d // h)
        key, value = self.kv(encoder_hidden_states).view(n, -1, 2, h, d // h).unbind(2)
        return query, key, value

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.processor(self, hidden_states, context, context_mask)
