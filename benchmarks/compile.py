"""Regional compilation (`model.compile_repeated_blocks()`, one compiled block reused by every block) against
whole-model `torch.compile` and eager, on DiT-S/2 and DiT-B/2 (32x32x4 latents), the speed benchmark's video DiT,
and the MNIST demo's DiT (width 64, 6 blocks, 4x4 patches of 28x28 digits: what `sample-batch --compile` speeds up).

    python benchmarks/compile.py --threads 2 --output benchmarks/results/compile.json
    python benchmarks/compile.py --models mnist-demo --batch_size 100 --output benchmarks/results/compile-mnist.json

Each variant runs in a fresh process with an empty inductor cache, so the compile time (the first call's time
minus an eager call's) is a cold compile; then the forward is timed (no grad, batch `--batch_size`), medians over
`--repeats` calls. Ratios are against eager in the same process: > 1 is faster than eager.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

MODELS = ("DiT-S/2", "DiT-B/2", "video", "mnist-demo")
MNIST_DEMO = dict(hidden_size=64, depth=6, num_heads=2, sample_size=28, in_channels=1, num_classes=10)  # on DiT-S/4
VARIANTS = ("eager", "whole", "regional")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--models", nargs="+", default=list(MODELS[:3]), choices=MODELS)
    p.add_argument("--output", default=None)
    p.add_argument("--probe", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: model variant
    return p.parse_args(argv)


def build(name: str, batch: int):
    """The model (random weights) and its inputs."""
    torch.manual_seed(0)
    t = torch.randint(0, 1000, (batch,))
    if name == "video":
        from dit_pipelines import VideoDiTModel

        model = VideoDiTModel(
            sample_size=32,
            sample_frames=8,
            in_channels=4,
            hidden_size=384,
            depth=6,
            num_heads=6,
            text_embed_dim=64,
            attention_layout="interleaved",
            temporal_cross_attention=False,
        )
        kwargs = {"encoder_hidden_states": torch.randn(batch, 16, 64), "encoder_attention_mask": torch.ones(batch, 16)}
        return model.eval(), (torch.randn(batch, 4, 8, 32, 32), t), kwargs
    from dit_pipelines import DiTModel

    if name == "mnist-demo":
        model = DiTModel.from_preset("DiT-S/4", **MNIST_DEMO).eval()
        return model, (torch.randn(batch, 1, 28, 28), t), {"class_labels": torch.randint(0, 11, (batch,))}
    model = DiTModel.from_preset(name, sample_size=32, num_classes=1000).eval()
    return model, (torch.randn(batch, 4, 32, 32), t), {"class_labels": torch.randint(0, 1000, (batch,))}


def probe(name: str, variant: str, args) -> dict:
    """One variant's compile and forward times, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    model, inputs, kwargs = build(name, args.batch_size)

    def forward():
        with torch.no_grad():
            return model(*inputs, **kwargs).sample

    start = time.perf_counter()
    forward()
    eager_first = time.perf_counter() - start
    if variant == "whole":
        model = torch.compile(model, fullgraph=True)
    elif variant == "regional":
        model.compile_repeated_blocks(fullgraph=True)
    start = time.perf_counter()
    forward()
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return {
        "compile_s": max(first - eager_first, 0.0) if variant != "eager" else 0.0,
        "forward_median_s": statistics.median(times),
        "forward_min_s": min(times),
        "forward_max_s": max(times),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(*args.probe, args)))
        return
    results = {"threads": args.threads, "batch_size": args.batch_size, "torch": torch.__version__, "rows": []}
    for name in args.models:
        row = {"model": name}
        for variant in VARIANTS:
            with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache for each variant
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                command = [
                    sys.executable,
                    __file__,
                    "--probe",
                    name,
                    variant,
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                    "--batch_size",
                    str(args.batch_size),
                ]
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                row[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        for variant in ("whole", "regional"):
            row[variant]["speedup_vs_eager"] = row["eager"]["forward_median_s"] / row[variant]["forward_median_s"]
        row["regional_compile_time_vs_whole"] = row["regional"]["compile_s"] / max(row["whole"]["compile_s"], 1e-9)
        results["rows"].append(row)
        print(
            f"{name}: eager {row['eager']['forward_median_s'] * 1e3:.0f} ms | whole: compile "
            f"{row['whole']['compile_s']:.1f} s, {row['whole']['forward_median_s'] * 1e3:.0f} ms "
            f"({row['whole']['speedup_vs_eager']:.2f}x) | regional: compile {row['regional']['compile_s']:.1f} s, "
            f"{row['regional']['forward_median_s'] * 1e3:.0f} ms ({row['regional']['speedup_vs_eager']:.2f}x)",
            flush=True,
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
