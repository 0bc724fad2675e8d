"""`dit-pipelines evaluate` end to end on small batches written here, with the real TF-FID network."""

import json

import numpy as np
import pytest
import torch

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline
from dit_pipelines.cli import main
from dit_pipelines.evaluation import FeatureStatistics, InceptionOutput, InceptionV3Features, save_batch
from dit_pipelines.evaluation.evaluator import batch_features
from dit_pipelines.hub import model_card


@pytest.fixture(scope="module")
def logits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    weight = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05
    torch.save({"fc.weight": weight}, path)
    return str(path)


def blobs(n, seed, size=32):
    """Images with some structure (a bright square at a random place) so that features vary."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(0, size - 12, 2)
        image[y : y + 12, x : x + 12] = rng.integers(150, 256, 3)
    return images


def test_evaluate_prints_adm_table_writes_json_and_a_card_record(tmp_path, logits_file, tiny_dit, capsys):
    samples, reference = tmp_path / "samples.npz", tmp_path / "reference.npz"
    save_batch(str(samples), blobs(8, seed=0), labels=np.arange(8) % 2)
    save_batch(str(reference), blobs(10, seed=1))
    pipe_folder = tmp_path / "pipe"
    DiTImagePipeline(tiny_dit(), DiTDDPMScheduler(timestep_respacing="2")).save_pretrained(pipe_folder)

    args = [str(samples), str(reference), "--inception_logits", logits_file, "--batch_size", "3"]
    assert main(["evaluate", *args, "--json", str(tmp_path / "out.json"), "--pipeline", str(pipe_folder)]) == 0
    printed = capsys.readouterr().out
    for label in ("Inception Score", "FID", "sFID", "Precision", "Recall"):
        assert f"\n{label}: " in "\n" + printed
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["reference_statistics"] == "computed from its images" and results["num_samples"] == 8
    assert results["fid"] > 1 and results["sfid"] > 0 and 1 <= results["inception_score"] <= 1008
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1

    # recomputed from the features with the metric functions directly
    inception = InceptionV3Features.from_pretrained(logits=logits_file)
    ours, theirs = batch_features(str(samples), inception), batch_features(str(reference), inception)
    fid = FeatureStatistics.of(ours.pool).frechet_distance(FeatureStatistics.of(theirs.pool))
    assert results["fid"] == pytest.approx(fid, rel=1e-6)

    # a reference with stored statistics: those are used for FID and sFID (here the samples' own: both become 0, to
    # the precision of square roots of a rank-7 covariance's zero eigenvalues)
    stored = {"mu": ours.pool.double().mean(0).numpy(), "sigma": np.cov(ours.pool.double().numpy().T)}
    stored.update(mu_s=ours.spatial.double().mean(0).numpy(), sigma_s=np.cov(ours.spatial.double().numpy().T))
    save_batch(str(tmp_path / "with_stats.npz"), blobs(10, seed=1), statistics=stored)
    with_stats_args = [str(samples), str(tmp_path / "with_stats.npz"), "--inception_logits", logits_file]
    assert main(["evaluate", *with_stats_args, "--json", str(tmp_path / "s.json")]) == 0
    with_stats = json.loads((tmp_path / "s.json").read_text())
    assert with_stats["reference_statistics"] == "stored"
    assert abs(with_stats["fid"]) < 1e-3 and abs(with_stats["sfid"]) < 1e-3
    assert with_stats["precision"] == pytest.approx(results["precision"])  # still from the reference's images

    card = model_card(str(pipe_folder), "user/tiny").content
    assert "### inception_metrics" in card and "| FID |" in card and "sFID" in card


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 16, 16, 3), dtype=np.float32), r"'arr_0' is float32 of shape \(4, 16, 16, 3\)"),
        (np.zeros((4, 3, 16, 16), dtype=np.uint8), r"channels first\? use N, H, W, 3"),
        (np.zeros((4, 16, 16), dtype=np.uint8), r"'arr_0' is uint8 of shape \(4, 16, 16\)"),
        (np.zeros((4, 16, 16, 1), dtype=np.uint8), r"of shape \(4, 16, 16, 1\); expected 'arr_0': uint8 images"),
    ],
)
def test_a_batch_of_the_wrong_layout_is_refused_naming_the_file(tmp_path, array, message, capsys):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    save_batch(str(good), blobs(4, seed=0))
    np.savez(bad, array)
    assert main(["evaluate", str(bad), str(good)]) == 2  # checked before any network is loaded
    error = capsys.readouterr().err
    assert "bad.npz" in error and "(N, H, W, 3)" in error
    import re

    assert re.search(message, error), error


class CountingExtractor:
    """Stands in for the network: features are pixel statistics; counts the images it sees."""

    has_logits = False

    def __init__(self):
        self.seen = 0

    def fingerprint(self):
        return "pixel statistics"

    def extract(self, batches):
        batches = list(batches)
        self.seen += sum(len(b) for b in batches)
        x = torch.cat(batches).float()
        pool = x.flatten(1)[:, :6]
        return InceptionOutput(pool, x.mean((1, 2)), None)


def test_cached_features_resume_where_a_killed_evaluation_stopped(tmp_path, monkeypatch):
    import dit_pipelines.evaluation.evaluator as evaluator

    monkeypatch.setattr(evaluator, "CACHE_CHUNK", 2)
    path, cache = tmp_path / "samples.npz", tmp_path / "cache"
    save_batch(str(path), blobs(5, seed=0, size=16))
    first = CountingExtractor()
    full = batch_features(str(path), first, batch_size=2, cache_dir=str(cache))
    assert first.seen == 5 and len(list(cache.glob("chunk-*.pt"))) == 3
    (cache / "chunk-00001.pt").unlink()  # as if killed before the second chunk was saved
    again = CountingExtractor()
    resumed = batch_features(str(path), again, batch_size=2, cache_dir=str(cache))
    assert again.seen == 2 and torch.equal(resumed.pool, full.pool) and torch.equal(resumed.spatial, full.spatial)
    save_batch(str(path), blobs(5, seed=1, size=16))  # another file at the same path: the cache is not reused
    other = CountingExtractor()
    assert not torch.equal(batch_features(str(path), other, cache_dir=str(cache)).pool, full.pool) and other.seen == 5
