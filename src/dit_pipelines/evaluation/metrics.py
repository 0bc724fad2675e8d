"""The metrics of ADM's evaluator on feature sets, in float64: FID and sFID, Inception Score, precision and recall.

Each takes features (any extractor: `InceptionV3Features` for the field's numbers, a domain classifier's for a
domain measure) and knows no dataset.

>>> import torch
>>> a = torch.randn(2000, 4, dtype=torch.float64)
>>> round(frechet_distance(a, a + 1.0), 6)  # a shift by 1 in 4 dimensions
4.0
>>> onehot = torch.eye(10).repeat(50, 1) * 100  # confident logits spread evenly over 10 classes
>>> round(inception_score(onehot), 6)
10.0
"""

from dataclasses import dataclass
from typing import Tuple

import torch


@dataclass
class FeatureStatistics:
    """The Gaussian FID fits to a feature set: mean `mu` (D,) and covariance `sigma` (D, D), float64."""

    mu: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "FeatureStatistics":
        """The sample mean and (unbiased, N - 1) covariance of (N, D) features, as `np.cov` computes them."""
        features = torch.as_tensor(features).double()
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got {tuple(features.shape)}")
        return cls(features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1]))

    def frechet_distance(self, other: "FeatureStatistics") -> float:
        """||mu_1 - mu_2||² + tr(S_1 + S_2 - 2 (S_1 S_2)^½) (Heusel et al., 2017, eq. 6). tr((S_1 S_2)^½) is
        computed as tr((S_1^½ S_2 S_1^½)^½), which has the same eigenvalues and keeps every square root on a
        symmetric PSD matrix (scipy's `sqrtm` of the non-symmetric product, ADM's way, can turn complex)."""
        mu_1, mu_2 = torch.as_tensor(self.mu).double(), torch.as_tensor(other.mu).double()
        sigma_1, sigma_2 = torch.as_tensor(self.sigma).double(), torch.as_tensor(other.sigma).double()
        if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
            raise ValueError(f"statistics of different dimensions: {tuple(mu_1.shape)} and {tuple(mu_2.shape)}")
        root_1 = _sqrt_psd(sigma_1)
        cross = torch.linalg.eigvalsh(root_1 @ sigma_2 @ root_1).clamp(min=0).sqrt().sum()
        return float(((mu_1 - mu_2) ** 2).sum() + sigma_1.trace() + sigma_2.trace() - 2 * cross)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two (N, D) feature sets: FID on Inception pool features,
    sFID on the spatial ones, a domain FD on any other."""
    return FeatureStatistics.of(features_a).frechet_distance(FeatureStatistics.of(features_b))


def inception_score(logits: torch.Tensor, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) || p(y))) (Salimans et al., 2016), averaged over consecutive splits of `split_size`
    samples, as ADM's evaluator does (50,000 samples: 10 splits). `logits` (N, C); p(y|x) = softmax(logits),
    p(y) the mean over the split. Log-probabilities come from `log_softmax`, so a confident sample's zero
    probabilities add 0, not 0 * log 0."""
    logits = torch.as_tensor(logits).double()
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be (N, classes), got {tuple(logits.shape)}")
    scores = []
    for part in logits.split(split_size):
        log_p = torch.log_softmax(part, dim=1)  # log p(y|x)
        log_marginal = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(part)), dtype=torch.float64))
        kl = (log_p.exp() * (log_p - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    return float(torch.stack(scores).mean())


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp(min=0)


def manifold_radii(features: torch.Tensor, k: int = 3, block: int = 2048) -> torch.Tensor:
    """The squared distance from each feature to its k-th nearest neighbour other than itself (Kynkäänniemi et
    al., 2019): the radius of its ball in the estimated manifold. (N, D) -> (N,)."""
    features = torch.as_tensor(features).double()
    if len(features) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} features, got {len(features)}")
    # the (k+1)-th smallest includes the point itself at distance 0
    return torch.cat(
        [_squared_distances(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(block)]
    )


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 2048) -> float:
    """The share of `points` inside at least one ball (centre, squared radius)."""
    inside = [(_squared_distances(rows, centres) <= radii).any(1) for rows in points.split(block)]
    return float(torch.cat(inside).double().mean())


def precision_recall(reference: torch.Tensor, samples: torch.Tensor, k: int = 3) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019), as ADM's evaluator computes them on pool
    features: precision is the share of samples inside the reference manifold (the union of balls reaching each
    reference feature's k-th neighbour), recall the share of reference features inside the samples' manifold.
    ADM first tries float16 distances; these are float64."""
    reference, samples = torch.as_tensor(reference).double(), torch.as_tensor(samples).double()
    precision = _fraction_inside(samples, reference, manifold_radii(reference, k))
    recall = _fraction_inside(reference, samples, manifold_radii(samples, k))
    return precision, recall
