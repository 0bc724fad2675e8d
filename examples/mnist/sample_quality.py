"""Sample quality of a trained class-conditional MNIST pipeline.

    python -m examples.mnist.sample_quality --pipeline outputs/dit-mnist --samples_per_class 100

Generates `samples_per_class` images of each digit and reports (a) the accuracy with which a classifier trained on
real MNIST (trained and cached on first use, >= 99% on the test split) recognises the requested digit, and (b) the
Fréchet distance between the samples and the real test digits in that classifier's feature space, beside the
real-vs-real floor: held-out real digits (the validation split, as many per class as generated) against the same
test digits. Prints a table, and writes an `EvaluationRecord` (the model card's figures, every result in its
`details`) into a pipeline folder, and the results as JSON to `--output_json`.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler  # also registers the classes with diffusers
from dit_pipelines.evaluation import EvaluationRecord, Metric, frechet_distance

from .classifier import accuracy, class_balanced, features, load_classifier, mnist_tensors


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a saved DiTImagePipeline folder or Hub repo id")
    p.add_argument("--samples_per_class", type=int, default=100)
    p.add_argument("--guidance_scale", type=float, default=4.0)
    p.add_argument(
        "--guidance_interval",
        type=int,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="guide only at timesteps LOW <= t <= HIGH",
    )
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the scheduler's respacing")
    p.add_argument("--scheduler", choices=["saved", "ddpm", "ddim"], default="saved")
    p.add_argument("--cache_interval", type=int, default=None, help="feature caching (FORA): blocks every k steps")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_json", default=None, help="also write the results there")
    return p.parse_args(argv)


def generate(pipe, samples_per_class, args):
    """(N, 1, 28, 28) samples in [0, 1] and their requested labels, class by class."""
    labels = torch.arange(10).repeat_interleave(samples_per_class)
    images = []
    for i, start in enumerate(range(0, len(labels), args.batch_size)):
        batch = labels[start : start + args.batch_size]
        out = pipe(
            batch,
            guidance_scale=args.guidance_scale,
            guidance_interval=args.guidance_interval,
            cache_interval=args.cache_interval,
            num_inference_steps=args.num_inference_steps,
            output_type="pt",
            generator=torch.Generator().manual_seed(args.seed + i),
        ).images
        out = out.mean(1, keepdim=True)  # grayscale
        if out.shape[-2:] != (28, 28):
            out = F.interpolate(out, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        images.append(out.clamp(0, 1))
    return torch.cat(images), labels


def evaluate(pipe, args) -> dict:
    classifier = load_classifier()
    test_images, test_labels = mnist_tensors("test")
    held_out, _ = class_balanced(*mnist_tensors("validation"), args.samples_per_class, seed=args.seed)
    test_features = features(classifier, test_images)
    start = time.perf_counter()
    samples, labels = generate(pipe, args.samples_per_class, args)
    seconds = time.perf_counter() - start
    per_class = [accuracy(classifier, samples[labels == c], labels[labels == c]) for c in range(10)]
    fd = frechet_distance(features(classifier, samples), test_features)
    floor = frechet_distance(features(classifier, held_out), test_features)
    return {
        "class_accuracy": accuracy(classifier, samples, labels),
        "worst_class_accuracy": min(per_class),
        "per_class_accuracy": per_class,
        "frechet_distance": fd,
        "frechet_distance_real_floor": floor,
        "frechet_ratio_to_floor": fd / floor,
        "classifier_test_accuracy": accuracy(classifier, test_images, test_labels),
        "num_samples": len(samples),
        "guidance_scale": args.guidance_scale,
        "guidance_interval": args.guidance_interval,
        "cache_interval": args.cache_interval,
        "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": len(pipe.scheduler.timesteps),
        "sampling_seconds": seconds,
    }


def card_record(results: dict) -> EvaluationRecord:
    """The figures a model card shows; every result in `details`."""
    metrics = [
        Metric("class accuracy (MNIST classifier)", results["class_accuracy"], "{:.1%}"),
        Metric("Fréchet distance (classifier features)", results["frechet_distance"], "{:.1f}"),
        Metric("real-vs-real floor of that distance", results["frechet_distance_real_floor"], "{:.2f}"),
    ]
    keys = ("num_samples", "guidance_scale", "guidance_interval", "scheduler", "num_inference_steps", "cache_interval")
    settings = {k: results[k] for k in keys if results[k] is not None}
    description = (
        "Measured with `examples/mnist/sample_quality.py` of dit_pipelines: a classifier trained on the real digits "
        "reads the samples (class accuracy) and its features give the Fréchet distance to the real test digits "
        "(an MNIST classifier's feature space, not Inception's: not comparable with published FID figures)."
    )
    return EvaluationRecord("sample_quality", metrics, settings, description, details=results)


def main(args) -> dict:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler != "saved":
        cls = DiTDDPMScheduler if args.scheduler == "ddpm" else DiTDDIMScheduler
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    results = evaluate(pipe, args)
    interval = " for {} <= t <= {}".format(*args.guidance_interval) if args.guidance_interval else ""
    rows = [
        (f"class accuracy (guidance {args.guidance_scale:g}{interval})", f"{results['class_accuracy']:.4f}"),
        ("worst class accuracy", f"{results['worst_class_accuracy']:.4f}"),
        ("Fréchet distance, samples vs test", f"{results['frechet_distance']:.2f}"),
        ("Fréchet distance, held-out real vs test (floor)", f"{results['frechet_distance_real_floor']:.2f}"),
        ("ratio to the floor", f"{results['frechet_ratio_to_floor']:.2f}"),
        ("classifier accuracy on real test digits", f"{results['classifier_test_accuracy']:.4f}"),
        (
            "samples / sampler / steps",
            f"{results['num_samples']} / {results['scheduler']} / {results['num_inference_steps']}",
        ),
        ("feature cache interval", str(args.cache_interval or "off")),
        ("sampling time", f"{results['sampling_seconds']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if os.path.isdir(args.pipeline):
        print(f"Wrote {card_record(results).save(args.pipeline)}", file=sys.stderr)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {args.output_json}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main(parse_args())
