"""The field's metrics on the MNIST demo model: Inception FID-10K (and sFID, precision, recall) against the 10,000
test digits, beside the domain Fréchet distance and class accuracy of the MNIST classifier on the same samples, and
the real-vs-real floor (the 10,000 validation digits against the same test digits).

    python -m examples.mnist.inception_fid --pipeline outputs/dit-mnist --num_samples 10000

Every stage resumes after a kill: the digits are written once as ADM-format reference batches, the samples come
from `dit-pipelines sample-batch`'s resumable shards, and the Inception features of each 1,000 images are cached
(`batch_features(..., cache_dir=...)`) under `--work_dir`. On 2 CPU cores the Inception network takes about 0.15-0.3 s
an image (28x28 digits are resized to 299x299 as the TF graph does), so the 30,000 images take one to two hours.
The default sampler is the one the README recommends for FID: 250 DDPM steps with the learned variance and
guidance 1.5. Writes a table, JSON (`--output_json`) and an `EvaluationRecord` into the pipeline folder.
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from dit_pipelines.evaluation import EvaluationRecord, InceptionV3Features, Metric, frechet_distance, save_batch
from dit_pipelines.evaluation.evaluator import adm_metrics, batch_features
from dit_pipelines.pypi_files import cache_dir
from dit_pipelines.sample_batch import BatchSettings, write_sample_batch

from .classifier import accuracy, features, load_classifier, mnist_tensors


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default=None, help="a saved DiTImagePipeline folder")
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--guidance_scale", type=float, default=1.5)
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the scheduler's respacing")
    p.add_argument("--cache_interval", type=int, default=None, help="feature caching (FORA) while sampling")
    p.add_argument("--batch_size", type=int, default=50, help="samples per call (50: fastest on 2 cores, compiled)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer: 1.5x faster on 2 cores")
    p.add_argument("--inception_batch_size", type=int, default=25, help="25 measured fastest on 2 CPU cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work_dir", default=None, help="batches and feature caches (default: <cache>/inception_fid)")
    p.add_argument("--output_json", default=None)
    p.add_argument("--reference_count", type=int, default=10000, help="digits of each split (10,000: all)")
    p.add_argument("--references_only", action="store_true", help="only the real-vs-real floor (no pipeline)")
    p.add_argument(
        "--skip_floor",
        action="store_true",
        help="leave the floor out: its 10,000 validation digits' features take 20 min on 2 cores, and the same digits "
        "and network give the same floor as any earlier run (--references_only measures it alone)",
    )
    return p.parse_args(argv)


def reference_batch(split: str, folder: str, count: int = 10000) -> str:
    """The first `count` digits of the MNIST `split` as an ADM batch of RGB digits (the grey channel repeated),
    written once."""
    path = os.path.join(folder, f"mnist-{split}-{count}.npz")
    if not os.path.exists(path):
        images, labels = mnist_tensors(split)
        images, labels = images[:count], labels[:count]
        digits = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()
        save_batch(path, digits, labels=labels.numpy())
    return path


def domain_measures(samples_path: str, reference_path: str, classifier) -> tuple:
    """Class accuracy and the classifier-feature Fréchet distance of a batch against a reference batch."""

    def read(path):
        with np.load(path) as batch:
            images = torch.from_numpy(batch["arr_0"][..., :1].copy()).permute(0, 3, 1, 2).float().div(255)
            return images, torch.from_numpy(batch["arr_1"])

    (images, labels), (test_images, _) = read(samples_path), read(reference_path)
    distance = frechet_distance(features(classifier, images), features(classifier, test_images))
    return accuracy(classifier, images, labels), distance


def main(args) -> dict:
    work = args.work_dir or str(cache_dir() / "inception_fid")
    os.makedirs(work, exist_ok=True)
    test, validation = (reference_batch(split, work, args.reference_count) for split in ("test", "validation"))
    inception = InceptionV3Features.from_pretrained(download_logits=False)
    results = {"minutes": {}}

    def stage(name, run):
        """Run one stage, time it, and keep what is known so far in `results.json` (the work of each stage is
        cached: a rerun after a kill redoes only what was not finished)."""
        started = time.perf_counter()
        value = run()
        results["minutes"][name] = (time.perf_counter() - started) / 60
        with open(os.path.join(work, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        return value

    def inception_features(name, path):
        cache = os.path.join(work, f"features-{name}")
        return stage(
            f"inception {name}", lambda: batch_features(path, inception, args.inception_batch_size, True, cache)
        )

    if args.references_only:  # the real-vs-real floor alone
        floor = adm_metrics(inception_features("validation", validation), inception_features("test", test))
        results["real_vs_real_floor"] = floor
        print(json.dumps(results, indent=2))
        return results
    if args.pipeline is None:
        raise ValueError("--pipeline is required (unless --references_only)")
    settings = BatchSettings.from_arguments(args)
    results["settings"] = settings.to_json()
    output = os.path.join(work, f"samples-{args.num_samples}-g{args.guidance_scale}.npz")
    samples = stage("sampling", lambda: write_sample_batch(settings, output, compile=args.compile))
    classifier = load_classifier()
    results["class_accuracy"], results["domain_frechet_distance"] = domain_measures(samples, test, classifier)
    results["domain_frechet_distance_floor"] = domain_measures(validation, test, classifier)[1]
    test_features = inception_features("test", test)
    sample_features = inception_features("samples", samples)
    # the model's metrics are saved (results.json) before the floor's features are computed
    results["model"] = model = stage("metrics", lambda: adm_metrics(sample_features, test_features))
    note = f"{args.num_samples} samples vs {args.reference_count} test digits"
    metrics = [Metric(f"FID-{args.num_samples // 1000}K (Inception)", model["fid"], "{:.2f}", note)]
    if not args.skip_floor:
        floor = adm_metrics(inception_features("validation", validation), test_features)
        results["real_vs_real_floor"] = floor
        floor_note = f"{args.reference_count} validation vs test digits"
        metrics.append(Metric("real-vs-real floor of that FID", floor["fid"], "{:.2f}", floor_note))
    domain_fd, class_accuracy = results["domain_frechet_distance"], results["class_accuracy"]
    EvaluationRecord(
        "inception_fid",
        [
            *metrics,
            Metric("sFID", model["sfid"], "{:.2f}", note),
            Metric("precision / recall", f"{model['precision']:.3f} / {model['recall']:.3f}", note="k = 3"),
            Metric("Fréchet distance (classifier features)", domain_fd, "{:.1f}", note),
            Metric("class accuracy", class_accuracy, "{:.1%}", "the MNIST classifier on the samples"),
        ],
        settings={k: v for k, v in settings.to_json().items() if k != "pipeline" and v is not None},
        description="Inception metrics as ADM's evaluator computes them (TF-FID Inception-v3 in PyTorch); the "
        "digits are resized from 28x28 to 299x299 as its graph does. FID on MNIST compares with other MNIST "
        "models' FIDs measured the same way, not with ImageNet figures.",
    ).save(args.pipeline)
    print(json.dumps(results, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(parse_args())
