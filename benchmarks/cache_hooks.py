"""Our `FeatureCache` (FORA, `cache_interval=k`) against diffusers' cache hooks on the README's MNIST DiT, at
matched speed-ups: sample quality (`examples/mnist/sample_quality.py`: class accuracy, worst digit, Fréchet distance
in the MNIST classifier's features) and sampling time against the uncached run measured in the same process.

    python -m examples.mnist.demo                                     # trains outputs/dit-mnist (about 20 min)
    python benchmarks/cache_hooks.py --pipeline outputs/dit-mnist --output benchmarks/results/cache_hooks.json

Every setting samples the same 1,000 digits (100 per class, same seeds) with the same sampler (25-step DDIM,
guidance 4, by default). Settings (`SETTINGS`), each at two strengths:
- ours: `cache_interval` 2 and 3 (blocks every k-th step, reused with the current step's adaLN gates);
- FirstBlockCache and MagCache (their thresholds; MagCache from its own calibration run on this model and sampler);
- TaylorSeer (`cache_interval` 2 and 3 after 2 full steps, first-order forecasts);
- PyramidAttentionBroadcast (attention reused 1 or 2 steps of 3; MLPs always computed);
- FasterCache (attention every 2nd or 3rd step, the unconditional half every 2nd or 3rd step).
The "attention" column is the fraction of attention computations made (a count, free of timing noise); the
speed-up is the uncached sampling time over the setting's, both medians of `--repeats` runs.
"""

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dit_pipelines.models.attention as attention_module  # noqa: E402
from dit_pipelines import DiTDDIMScheduler  # noqa: E402
from examples.mnist.classifier import accuracy, class_balanced, features, load_classifier, mnist_tensors  # noqa: E402
from examples.mnist.sample_quality import generate  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="outputs/dit-mnist")
    p.add_argument("--samples_per_class", type=int, default=100)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=4.0)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the quality is from the first)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="setting names to run (default: all)")
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


class AttentionCounter:
    """Counts calls of `dispatch_attention_fn`: every attention computation, whichever hook skips the rest."""

    def __init__(self):
        self.count = 0
        self._real = attention_module.dispatch_attention_fn
        attention_module.dispatch_attention_fn = self._counting

    def _counting(self, *args, **kwargs):
        self.count += 1
        return self._real(*args, **kwargs)


def mag_ratios(pipe, args) -> list:
    """MagCache's calibration on this model and sampler: one uncached call whose printed ratios are read back."""
    from diffusers import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=args.num_inference_steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pipe(
            list(range(10)),
            guidance_scale=args.guidance_scale,
            guidance_interval=None,
            generator=torch.manual_seed(0),
            output_type="pt",
        )
    pipe.transformer.disable_cache()
    return [float(x) for x in re.findall(r"\[([^\]]*)\]\s*$", printed.getvalue())[0].split(",")]


def settings(pipe, args) -> dict:
    """name -> (cache_interval for ours or None, a diffusers cache config or None)."""
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    now = lambda: pipe.current_timestep  # noqa: E731
    everywhere = (-1, 1001)
    steps = args.num_inference_steps

    def pab(skip):
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=skip,
            spatial_attention_timestep_skip_range=everywhere,
            current_timestep_callback=now,
        )

    def faster(skip):
        return FasterCacheConfig(
            spatial_attention_block_skip_range=skip,
            spatial_attention_timestep_skip_range=everywhere,
            unconditional_batch_skip_range=skip,
            unconditional_batch_timestep_skip_range=everywhere,
            current_timestep_callback=now,
        )

    def taylorseer(interval):
        return TaylorSeerCacheConfig(
            cache_interval=interval, disable_cache_before_step=2, taylor_factors_dtype=torch.float32
        )

    def fora(interval):  # ours as a TaylorSeer setting: outputs of attention and MLPs reused as they are
        return TaylorSeerCacheConfig(
            cache_interval=interval,
            disable_cache_before_step=1,
            max_order=0,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[r"blocks\.\d+\.(attn|mlp)"],
        )

    table = {
        "uncached": (None, None),
        "ours, cache_interval=2": (2, None),
        "ours, cache_interval=3": (3, None),
        "FirstBlockCache, threshold 0.1": (None, FirstBlockCacheConfig(threshold=0.1)),
        "FirstBlockCache, threshold 0.2": (None, FirstBlockCacheConfig(threshold=0.2)),
        "TaylorSeer order 0 on attn+mlp (= FORA), cache_interval=2": (None, fora(2)),
        "TaylorSeer order 0 on attn+mlp (= FORA), cache_interval=3": (None, fora(3)),
        "TaylorSeer, cache_interval=2": (None, taylorseer(2)),
        "TaylorSeer, cache_interval=3": (None, taylorseer(3)),
        "PyramidAttentionBroadcast, skip 2": (None, pab(2)),
        "PyramidAttentionBroadcast, skip 3": (None, pab(3)),
        "FasterCache, skip 2": (None, faster(2)),
        "FasterCache, skip 3": (None, faster(3)),
    }
    if args.only is None or any(name.startswith("MagCache") for name in args.only):
        ratios = mag_ratios(pipe, args)
        for threshold in (0.1, 0.3):
            config = MagCacheConfig(
                threshold=threshold, max_skip_steps=3, retention_ratio=0.2, num_inference_steps=steps, mag_ratios=ratios
            )
            table[f"MagCache, threshold {threshold}"] = (None, config)
    if args.only:
        table = {k: v for k, v in table.items() if k == "uncached" or k in args.only}
    return table


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    pipe.scheduler = DiTDDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    test_features = features(classifier, mnist_tensors("test")[0])
    held_out, _ = class_balanced(*mnist_tensors("validation"), args.samples_per_class, seed=0)
    from dit_pipelines.evaluation import frechet_distance

    floor = frechet_distance(features(classifier, held_out), test_features)
    options = argparse.Namespace(
        batch_size=args.batch_size,
        guidance_scale=args.guidance_scale,
        guidance_interval=None,
        num_inference_steps=args.num_inference_steps,
        seed=0,
        cache_interval=None,
    )
    generate(pipe, 1, options)  # warm-up, untimed: the first call pays for allocations and lazy imports
    counter = AttentionCounter()
    rows, uncached = [], None
    for name, (interval, config) in settings(pipe, args).items():
        options.cache_interval = interval
        if config is not None:
            pipe.transformer.enable_cache(config)
        times = []
        for repeat in range(args.repeats):
            counter.count = 0
            start = time.perf_counter()
            samples, labels = generate(pipe, args.samples_per_class, options)
            times.append(time.perf_counter() - start)
            if repeat == 0:
                attention_calls = counter.count
                per_class = [accuracy(classifier, samples[labels == c], labels[labels == c]) for c in range(10)]
                row = {
                    "setting": name,
                    "class_accuracy": accuracy(classifier, samples, labels),
                    "worst_class_accuracy": min(per_class),
                    "frechet_distance": frechet_distance(features(classifier, samples), test_features),
                }
        if config is not None:
            pipe.transformer.disable_cache()
        row["sampling_seconds"] = statistics.median(times)
        row["attention_calls"] = attention_calls
        if uncached is None:
            uncached = row
        row["speedup"] = uncached["sampling_seconds"] / row["sampling_seconds"]
        row["attention_fraction"] = attention_calls / uncached["attention_calls"]
        rows.append(row)
        print(
            f"{name:<36} acc {row['class_accuracy']:.1%} worst {row['worst_class_accuracy']:.0%} "
            f"FD {row['frechet_distance']:.1f} | {row['sampling_seconds']:.1f} s, {row['speedup']:.2f}x, "
            f"attention {row['attention_fraction']:.2f}",
            flush=True,
        )
    results = {
        "pipeline": args.pipeline,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "samples": 10 * args.samples_per_class,
        "frechet_distance_real_floor": floor,
        "threads": args.threads,
        "rows": rows,
    }
    print(f"real-vs-real floor of the Fréchet distance: {floor:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
