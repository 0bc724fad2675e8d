"""Embeddings of DiT (Peebles & Xie, 2023, §3.2): fixed sin-cos positions, timesteps and class labels."""

import math
from functools import lru_cache

import torch
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos features of `positions` (M,), as `[sin(pos·ω), cos(pos·ω)]` with
    ω_i = 1 / 10000^(2i/dim) (Vaswani et al., 2017, §3.5). Returns (M, dim) in float64."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dimension must be even, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@lru_cache(maxsize=16)
def sincos_2d(dim: int, grid_height: int, grid_width: int) -> torch.Tensor:
    """Fixed 2D position table of DiT for a `grid_height` x `grid_width` patch grid, tokens in row-major order.

    As in the original DiT (and MAE), the first half of the channels encodes the column and the second half the
    row. Computed in float64 and returned as float32 of shape (grid_height * grid_width, dim).

    >>> sincos_2d(8, 2, 3).shape
    torch.Size([6, 8])
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding dimension must be divisible by 4, got {dim}.")
    rows, cols = torch.meshgrid(
        torch.arange(grid_height, dtype=torch.float64), torch.arange(grid_width, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return table.float()


def timestep_features(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal timestep features `[cos(t·f), sin(t·f)]`, f_i = max_period^(-i / (dim/2 - freq_shift)).

    `freq_shift=0` is the original DiT; diffusers' DiT uses `freq_shift=1` (its `downscale_freq_shift`).
    `timesteps` is (N,), possibly fractional; returns (N, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None]  # (N, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps: sinusoidal features, then a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D)
        features = timestep_features(timesteps, self.frequency_dim, freq_shift=self.freq_shift)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embeds class labels. With `dropout_prob > 0` the table has one extra row, the "null" class
    (index `num_classes`), which stands for "no label" in classifier-free guidance (Ho & Salimans, 2022).

    The embedder never drops labels itself, whatever the module's mode: the training loss asks for label dropout
    explicitly (`dit_pipelines.training.drop_labels`), so a model sampled in training mode gives the same images as
    in eval mode."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D)
        return self.embedding_table(labels)
