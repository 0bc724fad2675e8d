"""ADM's metrics against independent float64 recomputations (NumPy/SciPy written here)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from dit_pipelines.evaluation import FeatureStatistics, frechet_distance, inception_score, precision_recall
from dit_pipelines.evaluation.metrics import manifold_radii


def features_with_statistics(rng, n, mu, covariance):
    """n features whose sample mean is exactly `mu` and sample covariance (N - 1) exactly `covariance`: white
    noise centred and whitened to identity, then coloured by a Cholesky factor."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T
    return torch.from_numpy(mu + z @ np.linalg.cholesky(covariance).T)


def random_covariance(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def closed_form_fid(mu_1, sigma_1, mu_2, sigma_2):
    covmean = scipy.linalg.sqrtm(sigma_1 @ sigma_2).real  # ADM's (and TTUR's) formula, in float64
    return ((mu_1 - mu_2) ** 2).sum() + np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [16, 64])  # sFID and FID are the same formula; 64 dims stands in for 2023 and 2048
def test_fid_of_gaussian_features_equals_the_closed_form(d):
    rng = np.random.default_rng(d)
    mu_1, mu_2 = rng.normal(size=d), rng.normal(size=d) + 0.3
    sigma_1, sigma_2 = random_covariance(rng, d), random_covariance(rng, d)
    a = features_with_statistics(rng, 500, mu_1, sigma_1)
    b = features_with_statistics(rng, 700, mu_2, sigma_2)
    expected = closed_form_fid(mu_1, sigma_1, mu_2, sigma_2)
    assert abs(frechet_distance(a, b) - expected) < 1e-6
    # from stored statistics, as a reference batch gives them
    stats = FeatureStatistics(torch.from_numpy(mu_1), torch.from_numpy(sigma_1))
    assert abs(stats.frechet_distance(FeatureStatistics.of(b)) - expected) < 1e-6
    # commuting (diagonal) covariances: tr sqrt(S1 S2) = sum sqrt(s1 s2) exactly
    s_1, s_2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    diagonal = ((mu_1 - mu_2) ** 2).sum() + (s_1 + s_2 - 2 * np.sqrt(s_1 * s_2)).sum()
    got = FeatureStatistics(torch.from_numpy(mu_1), torch.diag(torch.from_numpy(s_1)))
    assert (
        abs(
            got.frechet_distance(FeatureStatistics(torch.from_numpy(mu_2), torch.diag(torch.from_numpy(s_2))))
            - diagonal
        )
        < 1e-6
    )


def test_fid_of_a_set_against_itself_is_zero():
    features = torch.from_numpy(np.random.default_rng(0).normal(size=(300, 40)))
    assert abs(frechet_distance(features, features)) < 1e-6
    assert FeatureStatistics.of(features).sigma.shape == (40, 40)


def test_inception_score_of_evenly_spread_confident_logits_is_the_class_count():
    for k in (1, 7, 10):
        logits = torch.zeros(20 * k, 1008)
        logits[torch.arange(20 * k), torch.arange(20 * k) % k] = 200.0  # softmax is one-hot to float64 precision
        assert abs(inception_score(logits) - k) < 1e-6


def test_inception_score_matches_adm_formula_with_splits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(250, 12)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for part in (p[:100], p[100:200], p[200:]):  # ADM: consecutive splits of split_size samples
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert abs(inception_score(torch.from_numpy(logits), split_size=100) - np.mean(scores)) < 1e-9


def reference_radii(features, k):
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def test_precision_recall_against_a_brute_force_recomputation():
    rng = np.random.default_rng(2)
    reference, samples = rng.normal(size=(120, 5)), rng.normal(size=(90, 5)) * 1.3 + 0.4
    radii_r, radii_s = reference_radii(reference, 3), reference_radii(samples, 3)
    d = ((samples[:, None] - reference[None]) ** 2).sum(-1)  # (samples, reference)
    precision = (d <= radii_r[None]).any(1).mean()
    recall = (d.T <= radii_s[None]).any(1).mean()
    got = precision_recall(torch.from_numpy(reference), torch.from_numpy(samples))
    assert np.allclose(manifold_radii(torch.from_numpy(reference), 3).numpy(), radii_r, rtol=1e-9)
    assert got == pytest.approx((precision, recall), abs=1e-12) and 0 < precision < 1 and 0 < recall < 1


def test_precision_recall_of_constructed_manifolds():
    points = torch.from_numpy(np.random.default_rng(3).normal(size=(200, 8)))
    assert precision_recall(points, points.clone()) == (1.0, 1.0)
    assert precision_recall(points, points + 1000.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="needs more than 3 features"):
        precision_recall(points[:3], points)
