"""Transformer layers shared by the image and video DiTs: adaLN modulation, MLP, the final layer (attention: see
`attention.py`)."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with per-sample shift and scale broadcast over the tokens."""
    return torch.addcmul(shift, x, 1 + scale)


class MLP(nn.Module):
    """The transformer MLP: Linear, GELU (tanh approximation), Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate), then a linear map of each token to its output patch (`out_features`).
    With `adaptive=False` (the DiT designs conditioned by cross-attention or in context) the norm is a plain
    LayerNorm with its own scale and shift, and `forward` takes no condition."""

    def __init__(self, hidden_size: int, out_features: int, adaptive: bool = True):
        super().__init__()
        self.adaptive = adaptive
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=1e-6)
        self.modulation = nn.Linear(hidden_size, 2 * hidden_size) if adaptive else None
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: (N, ..., D) tokens; condition: (N, D), or None when not adaptive
        if not self.adaptive:
            return self.linear(self.norm(x))
        modulation = self.modulation(condition).view(x.shape[0], *([1] * (x.ndim - 2)), -1)
        shift, scale = modulation.chunk(2, -1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, ..., out_features)
