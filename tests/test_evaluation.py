import json

import numpy as np
import torch

import examples.mnist.sample_quality as sample_quality
from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline
from dit_pipelines.evaluation import frechet_distance
from examples.mnist.classifier import MNISTClassifier, class_balanced


def test_frechet_distance_matches_an_eigenvalue_recomputation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a.T), np.cov(b.T)
    # tr sqrt(S_a S_b) = sum of the square roots of the (real, non-negative) eigenvalues of the product
    cross = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    assert abs(frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) - expected) < 1e-8 * expected
    assert abs(frechet_distance(torch.from_numpy(a), torch.from_numpy(a))) < 1e-8


def test_class_balanced_draws_per_class():
    labels = torch.arange(10).repeat(5)
    images = torch.arange(50).float()
    chosen, chosen_labels = class_balanced(images, labels, 3)
    assert torch.equal(torch.bincount(chosen_labels), torch.full((10,), 3))
    assert torch.equal(labels[chosen.long()], chosen_labels)


def test_the_benchmark_reports_accuracy_and_distances(tiny_dit, tmp_path, monkeypatch):
    """The benchmark's whole path on a tiny 28x28 pixel pipeline, with a random classifier and random 'real'
    digits standing in for the cached ones."""
    pipe = DiTImagePipeline(
        tiny_dit(in_channels=1, sample_size=28, patch_size=4), DiTDDPMScheduler(timestep_respacing="3")
    )
    pipe.save_pretrained(tmp_path / "pipe")
    torch.manual_seed(0)
    classifier = MNISTClassifier().eval()
    real = torch.rand(200, 1, 28, 28), torch.arange(10).repeat(20)
    monkeypatch.setattr(sample_quality, "load_classifier", lambda: classifier)
    monkeypatch.setattr(sample_quality, "mnist_tensors", lambda split: real)
    results = sample_quality.main(
        sample_quality.parse_args(
            ["--pipeline", str(tmp_path / "pipe"), "--samples_per_class", "3", "--batch_size", "7"]
        )
    )
    saved = json.loads((tmp_path / "pipe" / "evaluation" / "sample_quality.json").read_text())
    assert saved["details"] == results and results["num_samples"] == 30 and results["num_inference_steps"] == 3
    metrics = {m["name"]: m["value"] for m in saved["metrics"]}
    assert metrics["class accuracy (MNIST classifier)"] == results["class_accuracy"]
    assert saved["settings"]["num_samples"] == 30 and saved["settings"]["guidance_scale"] == 4.0
    assert 0 <= results["class_accuracy"] <= 1 and len(results["per_class_accuracy"]) == 10
    assert results["frechet_distance"] > 0 and results["frechet_distance_real_floor"] > 0
    assert results["frechet_ratio_to_floor"] == results["frechet_distance"] / results["frechet_distance_real_floor"]
