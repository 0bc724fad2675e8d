"""ADM's evaluation of a sample batch against a reference batch, in PyTorch: what `dit-pipelines evaluate` runs.

    dit-pipelines evaluate samples.npz VIRTUAL_imagenet256_labeled.npz --json results.json

Both files are in the layout of `dit_pipelines.evaluation.batches`. The reference's stored `mu`/`sigma` and
`mu_s`/`sigma_s` are used for FID and sFID when present (as ADM does); its images give the features of precision
and recall. The Inception Score is of the samples alone and needs the network's logits layer (see `inception`).

>>> from dit_pipelines.evaluation.evaluator import format_results
>>> results = {"inception_score": None, "fid": 3.9425, "sfid": 6.1404, "precision": 0.8265, "recall": 0.5309}
>>> print(format_results(results))
Inception Score: n/a (no Inception logits layer)
FID: 3.9425
sFID: 6.1404
Precision: 0.8265
Recall: 0.5309
"""

import os
from typing import Dict, Optional

import torch
from tqdm.auto import tqdm

from ..atomic_files import read_json, write_atomically, write_json
from .batches import batch_info, iter_images, load_statistics
from .inception import InceptionOutput, InceptionV3Features
from .metrics import FeatureStatistics, inception_score, precision_recall
from .record import EvaluationRecord, Metric

LINES = (("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"))
LINES += (("Precision", "precision"), ("Recall", "recall"))
CACHE_CHUNK = 1000  # images per cached feature file


def batch_features(
    path: str,
    inception: InceptionV3Features,
    batch_size: int = 64,
    progress: bool = False,
    cache_dir: Optional[str] = None,
) -> InceptionOutput:
    """The Inception features of every image of a batch file, read in chunks. With `cache_dir`, the features of
    each `CACHE_CHUNK` images are saved there as they are computed and reused: an evaluation killed midway (50,000
    images take hours on a CPU) resumes where it stopped. A cache left by another file is replaced."""
    info = batch_info(path)
    if cache_dir is None:
        return inception.extract(iter_images(path, batch_size), progress=progress, total=-(-info.count // batch_size))
    os.makedirs(cache_dir, exist_ok=True)
    # what the cached features depend on: the file, the network (its weights' checksum) and the chunking
    source = {"file": os.path.abspath(path), "bytes": os.path.getsize(path), "mtime": os.path.getmtime(path)}
    source.update(network=inception.fingerprint(), chunk=CACHE_CHUNK)
    source_file = os.path.join(cache_dir, "source.json")
    if read_json(source_file) != source:
        for name in os.listdir(cache_dir):
            if name.startswith("chunk-"):
                os.remove(os.path.join(cache_dir, name))
        write_json(source_file, source)
    parts = []
    chunks = iter_images(path, CACHE_CHUNK)
    for index, chunk in enumerate(tqdm(chunks, total=-(-info.count // CACHE_CHUNK), disable=not progress)):
        file = os.path.join(cache_dir, f"chunk-{index:05d}.pt")
        if not os.path.exists(file):
            features = inception.extract(torch.from_numpy(chunk).split(batch_size))
            write_atomically(file, lambda f: torch.save(vars(features), f))
        parts.append(InceptionOutput(**torch.load(file, weights_only=True)))
    logits = None if parts[0].logits is None else torch.cat([p.logits for p in parts])
    return InceptionOutput(torch.cat([p.pool for p in parts]), torch.cat([p.spatial for p in parts]), logits)


def adm_metrics(
    samples: InceptionOutput,
    reference: InceptionOutput,
    reference_statistics: Optional[Dict] = None,
) -> Dict[str, Optional[float]]:
    """The five numbers of ADM's evaluator from features: IS of the samples, FID and sFID against the reference
    (its stored statistics when given: `mu`, `sigma`, `mu_s`, `sigma_s`), precision and recall (k = 3)."""
    if reference_statistics is not None:
        pool = FeatureStatistics(reference_statistics["mu"], reference_statistics["sigma"])
        spatial = FeatureStatistics(reference_statistics["mu_s"], reference_statistics["sigma_s"])
    else:
        pool, spatial = FeatureStatistics.of(reference.pool), FeatureStatistics.of(reference.spatial)
    precision, recall = precision_recall(reference.pool, samples.pool)
    return {
        "inception_score": None if samples.logits is None else inception_score(samples.logits),
        "fid": FeatureStatistics.of(samples.pool).frechet_distance(pool),
        "sfid": FeatureStatistics.of(samples.spatial).frechet_distance(spatial),
        "precision": precision,
        "recall": recall,
    }


def evaluate_batches(
    sample_path: str,
    reference_path: str,
    inception: Optional[InceptionV3Features] = None,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: Optional[str] = None,
) -> Dict:
    """ADM's five metrics for two batch files, with the counts and where the reference statistics came from.
    With `cache_dir`, the features of each file are kept in a sub-folder of it, and a killed evaluation resumes."""
    sample_info, reference_info = batch_info(sample_path), batch_info(reference_path)  # both checked first
    inception = inception or InceptionV3Features.from_pretrained()

    def features(path, name):
        return batch_features(path, inception, batch_size, progress, cache_dir and os.path.join(cache_dir, name))

    reference, samples = features(reference_path, "reference"), features(sample_path, "samples")
    statistics = load_statistics(reference_path)
    results = adm_metrics(samples, reference, statistics)
    results.update(
        num_samples=sample_info.count,
        num_reference=reference_info.count,
        reference_statistics="stored" if statistics is not None else "computed from its images",
        samples=os.path.basename(sample_path),
        reference=os.path.basename(reference_path),
    )
    return results


def format_results(results: Dict) -> str:
    """The table ADM's evaluator prints."""
    lines = []
    for label, key in LINES:
        value = results.get(key)
        lines.append(f"{label}: {value:.4f}" if value is not None else f"{label}: n/a (no Inception logits layer)")
    return "\n".join(lines)


def evaluation_record(results: Dict, settings: Optional[Dict] = None, name: str = "inception_metrics"):
    """An `EvaluationRecord` of the results, which the model card renders."""
    note = f"{results.get('num_samples')} samples vs {results.get('reference')}"
    metrics = [
        Metric("FID", results["fid"], "{:.2f}", note),
        Metric("sFID", results["sfid"], "{:.2f}", note),
        Metric("Inception Score", results["inception_score"], "{:.2f}", "samples only"),
        Metric("precision", results["precision"], "{:.3f}", "k = 3"),
        Metric("recall", results["recall"], "{:.3f}", "k = 3"),
    ]
    description = (
        "ADM's evaluator metrics (openai/guided-diffusion), computed in PyTorch with the TF-FID Inception-v3: "
        f"FID and sFID against `{results.get('reference')}` (reference statistics "
        f"{results.get('reference_statistics', 'computed')}), Inception Score, improved precision and recall."
    )
    return EvaluationRecord(name, metrics, settings=dict(settings or {}), description=description)
