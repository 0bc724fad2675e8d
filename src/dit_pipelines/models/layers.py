"""Transformer layers shared by the image and video DiTs: adaLN modulation, attention, MLP, the final layer."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with per-sample shift and scale broadcast over the tokens."""
    return torch.addcmul(shift, x, 1 + scale)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, T, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """The transformer MLP: Linear, GELU (tanh approximation), Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate), then a linear map of each token to its output patch (`out_features`)."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # x: (N, ..., D) tokens; condition: (N, D)
        modulation = self.modulation(condition).view(x.shape[0], *([1] * (x.ndim - 2)), -1)
        shift, scale = modulation.chunk(2, -1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, ..., out_features)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens (N, T, D) to a context (N, L, D), through `scaled_dot_product_attention`;
    context positions where `context_mask` (N, L) is 0 are ignored (padding)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None):
        n, t, d = x.shape
        h = self.num_heads
        q = self.q(x).view(n, t, h, d // h).transpose(1, 2)  # (N, H, T, Dh)
        k, v = self.kv(context).view(n, -1, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (N, H, L, Dh)
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]  # (N, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))
