"""The out-of-core latent cache at ImageNet scale: write a cache of N samples (32x32x4 posterior means and stds, with
mirrors: the layout `train_dit.py --precompute_latents --random_flip` writes), then feed the training loop from it,
measuring write time, read throughput and peak resident memory, for a small and a large N.

    python -m benchmarks.latent_cache                       # 20,000 and 200,000 samples, float32 (13 GB on disk)
    python -m benchmarks.latent_cache --sizes 2000 20000    # a quick look

A cheap stand-in encoder fills the cache (seeded Gaussian posteriors), so that what is measured is the cache and
not the VAE. Each phase runs in its own process, so that each peak RSS is its own. The read phase opens the cache
(every shard's header checked, every value checked finite), then draws batches exactly as training does:
`ShardedEpochSampler` order, `CachedSamples` reads, the mirror choice and the posterior sample of
`TrainingImages.to_model_input`. For comparison it also reads the same batches through safetensors' memory-mapped
`safe_open` (handles kept open), whose RSS grows with the pages touched.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import torch

LATENT = (4, 4, 32, 32)  # (mean, std, mirrored mean, mirrored std) x (C, h, w)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def key(n: int, dtype: str) -> dict:
    return {"kind": "benchmark posteriors", "samples": n, "dtype": dtype}


def write(root: str, n: int, dtype: str) -> dict:
    from dit_pipelines.training import Field, fill_cache
    from dit_pipelines.training.latent_cache import CACHE_DTYPES

    def stand_in_encoder(rows):  # seeded posteriors: mean ~ N(0, 1), std in (0.01, 0.11)
        g = torch.Generator().manual_seed(rows.start)
        latents = torch.randn(len(rows), *LATENT, generator=g)
        latents[:, 1::2] = 0.01 + 0.1 * latents[:, 1::2].sigmoid()
        return {"latents": latents, "label": torch.arange(rows.start, rows.stop) % 1000}

    fields = {"latents": Field(LATENT, CACHE_DTYPES[dtype]), "label": Field((), torch.int64)}
    start = time.perf_counter()
    cache = fill_cache(root, "latents", key(n, dtype), n, fields, stand_in_encoder)
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(cache.folder, f)) for f in os.listdir(cache.folder))
    return {"write_s": seconds, "gb": size / 1e9, "write_gb_per_s": size / 1e9 / seconds, "write_rss_mb": peak_rss_mb()}


def read(root: str, n: int, dtype: str, batches: int, batch_size: int, workers: int, reader: str) -> dict:
    from torch.utils.data import DataLoader

    from dit_pipelines.training import CachedSamples, ShardedCache, ShardedEpochSampler
    from dit_pipelines.training.image_data import TrainingImages
    from dit_pipelines.training.sharded_cache import cache_folder

    torch.set_num_threads(1)
    start = time.perf_counter()
    cache = ShardedCache(cache_folder(root, "latents", key(n, dtype)))
    open_s = time.perf_counter() - start
    dataset = CachedSamples(cache) if reader == "pread" else MappedSamples(cache)
    sampler = ShardedEpochSampler(n, batch_size, seed=0)
    collate = getattr(dataset, "collate_fn", None)
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, drop_last=True, collate_fn=collate)

    class _Config:  # what sample_latents reads of a VAE config
        scaling_factor, shift_factor = 0.18215, None

    data = TrainingImages(dataset, 4, 32, vae=type("VAE", (), {"config": _Config})(), random_flip=True)
    seen, start, i, epoch = 0, None, 0, 0
    while i < batches + 2:  # as many epochs as it takes
        sampler.set_position(epoch)
        for batch in loader:
            if i == 2:  # the first batches start the workers
                start, seen = time.perf_counter(), 0
            x0, labels = data.to_model_input(batch, "cpu")
            assert x0.shape == (batch_size, 4, 32, 32) and torch.isfinite(x0).all()
            seen, i = seen + len(x0), i + 1
            if i >= batches + 2:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    del loader
    return {
        "reader": reader,
        "workers": workers,
        "open_s": open_s,
        "samples_per_s": seen / seconds,
        "read_rss_mb": peak_rss_mb(),
        "worker_rss_mb": peak_rss_mb(children=True) if workers else 0.0,
        "samples_read": seen,
    }


class MappedSamples(torch.utils.data.Dataset):
    """The comparison reader: the same cache through safetensors' memory-mapped `safe_open`, handles kept open."""

    def __init__(self, cache):
        self.cache, self.handles = cache, {}

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        from safetensors import safe_open

        path = self.cache.shards[i // self.cache.shard_size][0]
        if path not in self.handles:
            self.handles[path] = safe_open(path, "pt")
        local = i % self.cache.shard_size
        handle = self.handles[path]
        return {name: handle.get_slice(name)[local : local + 1][0] for name in ("latents", "label")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--root", default="/tmp/dit_latent_cache_benchmark")
    parser.add_argument("--batches", type=int, default=400, help="batches read per measurement")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--mmap", action=argparse.BooleanOptionalAction, default=True, help="also read with mmap")
    parser.add_argument("--keep", action="store_true", help="keep the caches afterwards")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # one phase, in a child process
    parser.add_argument("--out", default="benchmarks/results/latent_cache.json")
    args = parser.parse_args()
    if args.phase:
        phase, n, workers, reader = args.phase.split(":")
        if phase == "write":
            result = write(args.root, int(n), args.dtype)
        else:
            result = read(args.root, int(n), args.dtype, args.batches, args.batch_size, int(workers), reader)
        print("RESULT " + json.dumps(result))
        return

    def child(phase):
        command = [sys.executable, "-m", "benchmarks.latent_cache", "--phase", phase, "--root", args.root]
        command += ["--dtype", args.dtype, "--batches", str(args.batches), "--batch_size", str(args.batch_size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])

    results = {"machine": machine(), "dtype": args.dtype, "batch_size": args.batch_size, "sizes": {}}
    for n in args.sizes:
        entry = {"write": child(f"write:{n}:0:-"), "read": []}
        for workers in args.workers:
            entry["read"].append(child(f"read:{n}:{workers}:pread"))
        if args.mmap:
            entry["read"].append(child(f"read:{n}:0:mmap"))
        results["sizes"][str(n)] = entry
        print(n, json.dumps(entry, indent=1), flush=True)
        if not args.keep:
            shutil.rmtree(args.root)
    small, large = (results["sizes"][str(n)] for n in (min(args.sizes), max(args.sizes)))
    ratios = [b["read_rss_mb"] / a["read_rss_mb"] for a, b in zip(small["read"], large["read"])]
    results["rss_ratio_large_to_small"] = ratios
    print("peak read RSS, large / small:", [f"{r:.3f}" for r in ratios])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


def machine() -> str:
    import platform

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    return f"{model}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}"


if __name__ == "__main__":
    main()
