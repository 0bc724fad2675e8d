"""The Fréchet distance between two sets of features (Heusel et al., 2017): FID's formula, any feature extractor.

>>> import torch
>>> a = torch.randn(2000, 4, dtype=torch.float64)
>>> round(frechet_distance(a, a + 1.0), 6)  # a shift by 1 in 4 dimensions
4.0
"""

import torch


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½) between Gaussians fitted to two (N, D) feature
    sets, in float64. The symmetric form keeps every square root on a symmetric PSD matrix."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)

    def sqrt_psd(m):
        values, vectors = torch.linalg.eigh(m)
        return (vectors * values.clamp(min=0).sqrt()) @ vectors.T

    root_a = sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)
