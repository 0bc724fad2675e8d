"""Speed of dit_pipelines against diffusers on the same work, measured in the same run.

    python benchmarks/speed.py --threads 1
    python benchmarks/speed.py --threads 2 --output speed-2threads.json
    python benchmarks/speed.py --threads 2 --only forward --repeats 5      # one section, fewer repeats
    python benchmarks/speed.py --threads 2 --only forward --compile        # both models through torch.compile
    python benchmarks/speed.py --threads 2 --only forward --dtype bfloat16 # both models in bfloat16

Rows (identical weights where the two implementations share an architecture):
- `forward`: `DiTModel` vs diffusers' `DiTTransformer2DModel` (converted from ours with `dit_to_diffusers`), DiT-S/2
  and DiT-B/2 on 32x32x4 latents, batch 1, 8, 16, no grad; achieved FLOP/s as a fraction of the fp32 matmul rate.
- `train`: one training step (forward, backward, AdamW) at DiT-S/2 batch 8; peak memory of the step (resident set
  growth, in a fresh process per implementation); FLOP/s counted as 3x the forward's (backward = 2x forward).
- `pipeline`: `DiTImagePipeline` vs diffusers' `DiTPipeline`, DiT-S/2 and DiT-B/2 (`--pipeline_models`), 25 DDIM
  steps, guidance 4, the same random `AutoencoderKL` (Stable Diffusion's architecture), 4 labels; ours also with
  feature caching (`cache_interval` 2 and 3, `--cache_intervals`), which approximates.
- `video`: `VideoDiTModel` (interleaved layout = Latte's variant 1, temporal blocks without cross-attention as in
  Latte) vs diffusers' `LatteTransformer3DModel` at a matched size (8 frames of 32x32x4, p = 2, width 384,
  6 spatial + 6 temporal blocks, 6 heads, 16 text tokens of width 64); FLOP/s as a fraction of the matmul rate.

Timing: the two implementations run interleaved (A B A B ...) after a warm-up, so that the machine's drift hits
both; each row reports medians, the spread (min-max) and the ratio theirs/ours (> 1: ours is faster). The fp32
matmul rate is measured in the same run at the same thread count (a 2048-square `torch.mm`). FLOPs are counted
analytically (multiply-adds x 2), attention included.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

DIT_SIZES = {"DiT-S/2": (384, 12, 6), "DiT-B/2": (768, 12, 12)}  # width, depth, heads (p = 2, 1000 classes)
TRAIN_SIZE = "DiT-S/2"
VIDEO_SIZE = (384, 6, 6)  # width, spatial (= temporal) blocks, heads
VAE_CHANNELS = (128, 256, 512, 512)  # Stable Diffusion's VAE


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each implementation, interleaved")
    p.add_argument("--only", nargs="*", default=None, choices=["forward", "train", "pipeline", "video"])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--pipeline_models", nargs="+", default=list(DIT_SIZES), choices=list(DIT_SIZES))
    p.add_argument("--cache_intervals", type=int, nargs="*", default=[2, 3], help="pipeline rows with caching")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="forward rows: weights, inputs")
    p.add_argument(
        "--compile", action="store_true", help="forward rows: torch.compile both models (first call untimed)"
    )
    p.add_argument("--output", default=None, help="JSON file for the results")
    p.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)  # internal: "ours|diffusers:W:D:H"
    return p.parse_args(argv)


def interleaved(runs: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each callable, called in turn (A B A B ...) after `warmup` untimed rounds."""
    times = {name: [] for name in runs}
    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: List[float]) -> dict:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def add_timings(row: dict, times: Dict[str, List[float]], flops: float = 0.0, rate: float = 1.0) -> dict:
    """`row` with each implementation's `summary` (and, given the work's `flops`, its FLOP/s as a fraction of the
    matmul `rate`) and the ratio theirs/ours of the medians."""
    for impl, seconds in times.items():
        row[impl] = summary(seconds)
        if flops:
            row[impl]["matmul_rate_fraction"] = flops / statistics.median(seconds) / rate
    row["ratio"] = row["diffusers"]["median_s"] / row["ours"]["median_s"]
    return row


def matmul_rate(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a `size`-square matmul in `dtype` (median)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    seconds = interleaved({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * size**3 / statistics.median(seconds)


def dit_forward_flops(batch: int, tokens: int, width: int, depth: int, patch_dim: int, out_dim: int) -> float:
    """FLOPs of a DiT forward: per block QKV + output projections (8 T D^2), attention scores and values
    (4 T^2 D), MLP with ratio 4 (16 T D^2); patch embedding and final layer; per sample, the timestep MLP
    (256 frequencies -> D -> D) and the adaLN maps (6D per block, 2D for the final layer)."""
    block = 24 * tokens * width**2 + 4 * tokens**2 * width
    ends = 2 * tokens * width * (patch_dim + out_dim)
    conditioning = 2 * (256 * width + width**2) + 2 * width * 6 * width * depth + 2 * width * 2 * width
    return batch * (depth * block + ends + conditioning)


def video_forward_flops(
    batch: int, frames: int, tokens: int, width: int, pairs: int, text_tokens: int, text_width: int
) -> float:
    """FLOPs of an interleaved video DiT forward on `frames` x `tokens` tokens (T in all): per spatial block the DiT
    block's projections and MLP (24 T D^2), attention within each frame (4 T tokens D) and cross-attention to the
    L text tokens (query and output projections 4 T D^2, keys and values 4 L D^2, attention 4 T L D); per temporal
    block the projections and MLP and attention within each location (4 T frames D); the ends (patch embedding,
    final layer); per sample the caption projection, the timestep MLP and the adaLN maps."""
    t, d = frames * tokens, width
    spatial = 24 * t * d**2 + 4 * t * tokens * d + 4 * t * d**2 + 4 * text_tokens * d**2 + 4 * t * text_tokens * d
    temporal = 24 * t * d**2 + 4 * t * frames * d
    ends = 2 * t * d * (2 * 2 * 4 + 2 * 2 * 8)
    conditioning = (
        2 * text_tokens * (text_width * d + d**2) + 2 * (256 * d + d**2) + 2 * d * (6 * d * 2 * pairs + 2 * d)
    )
    return batch * (pairs * (spatial + temporal) + ends + conditioning)


def our_dit(width: int, depth: int, heads: int):
    """Our DiT on 32x32x4 latents, p = 2, 1000 classes, with diffusers' timestep shift and pre-MLP eps."""
    from dit_pipelines import DiTModel

    shape = dict(sample_size=32, patch_size=2, in_channels=4, hidden_size=width, depth=depth, num_heads=heads)
    return DiTModel(**shape, timestep_freq_shift=1.0, mlp_norm_eps=1e-5)


def dit_pair(width: int, depth: int, heads: int):
    """`our_dit` (random weights, adaLN not zero) and diffusers' copy of it."""
    from dit_pipelines.conversion import dit_to_diffusers

    torch.manual_seed(0)
    ours = our_dit(width, depth, heads).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    theirs = dit_to_diffusers(ours).eval()
    return ours, theirs


def dit_inputs(batch: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    return x, t, y


def bench_forward(args, rate: float) -> List[dict]:
    rows = []
    for name, (width, depth, heads) in DIT_SIZES.items():
        ours, theirs = dit_pair(width, depth, heads)
        if args.dtype != "float32":
            ours, theirs = ours.to(getattr(torch, args.dtype)), theirs.to(getattr(torch, args.dtype))
        if args.compile:
            ours, theirs = torch.compile(ours), torch.compile(theirs)
        for batch in args.batch_sizes:
            x, t, y = dit_inputs(batch)
            x = x.to(getattr(torch, args.dtype))
            with torch.no_grad():
                difference = (ours(x, t, y).sample - theirs(x, t, y).sample).abs().max().item()
                times = interleaved({"ours": lambda: ours(x, t, y), "diffusers": lambda: theirs(x, t, y)}, args.repeats)
            flops = dit_forward_flops(batch, 256, width, depth, 2 * 2 * 4, 2 * 2 * 8)
            row = {"section": "forward", "model": name, "batch": batch, "max_abs_difference": difference}
            variant = ["both compiled"] * args.compile + [f"both {args.dtype}"] * (args.dtype != "float32")
            row["variant"] = ", ".join(variant) or "ours"
            rows.append(add_timings(row, times, flops, rate))
            print_row(row)
    return rows


def training_step(model, batch: int = 8):
    """A callable running one AdamW step of `model` on random DiT inputs (the output's mean square as loss)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, y = dit_inputs(batch)
    model.train()

    def step():
        loss = model(x, t, y).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_memory_of_step(which: str, threads: int) -> float:
    """MiB the resident set grows by during the first two training steps (batch 8), in a fresh process."""
    probe = ":".join([which, *map(str, DIT_SIZES[TRAIN_SIZE])])
    code = [sys.executable, __file__, "--memory_probe", probe, "--threads", str(threads)]
    done = subprocess.run(code, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def memory_probe(probe: str) -> None:
    """Build ONE implementation (building both, or converting, would set a resident-set peak the step may not
    exceed), then print how many MiB two training steps add to the process's peak resident set."""
    from diffusers import DiTTransformer2DModel

    which, width, depth, heads = probe.split(":")
    width, depth, heads = int(width), int(depth), int(heads)
    if which == "ours":
        model = our_dit(width, depth, heads)
    else:
        model = DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=width // heads,
            in_channels=4,
            out_channels=8,
            num_layers=depth,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
    step = training_step(model)
    before = peak_resident_mib()
    step()
    step()
    print(peak_resident_mib() - before)


def peak_resident_mib() -> float:
    """This process's peak resident set: VmHWM on Linux (ru_maxrss would carry over the parent's peak, since it
    survives fork and exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train(args, rate: float) -> List[dict]:
    width, depth, heads = DIT_SIZES[TRAIN_SIZE]
    ours, theirs = dit_pair(width, depth, heads)
    times = interleaved({"ours": training_step(ours), "diffusers": training_step(theirs)}, args.repeats)
    row = {"section": "train", "model": TRAIN_SIZE, "batch": 8}
    flops = 3 * dit_forward_flops(8, 256, width, depth, 2 * 2 * 4, 2 * 2 * 8)  # backward ~ 2x forward; AdamW aside
    add_timings(row, times, flops, rate)
    for impl in times:
        row[impl]["peak_memory_mib"] = peak_memory_of_step(impl, args.threads)
    print_row(row)
    return [row]


def bench_pipeline(args) -> List[dict]:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    from dit_pipelines import DiTDDIMScheduler, DiTImagePipeline

    torch.manual_seed(0)
    levels = len(VAE_CHANNELS)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels)
    sizes = dict(block_out_channels=VAE_CHANNELS, latent_channels=4, layers_per_block=2)
    vae = AutoencoderKL(**blocks, **sizes, norm_num_groups=min(32, VAE_CHANNELS[0])).eval()
    ddim = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    labels = [1, 2, 3, 4]
    rows = []
    for name in args.pipeline_models:
        ours, theirs = dit_pair(*DIT_SIZES[name])
        our_pipe = DiTImagePipeline(ours, DiTDDIMScheduler(), vae=vae)
        their_pipe = DiTPipeline(theirs, vae, DDIMScheduler(**ddim, clip_sample=False, timestep_spacing="linspace"))
        for pipe in (our_pipe, their_pipe):
            pipe.set_progress_bar_config(disable=True)
        common = dict(guidance_scale=4.0, num_inference_steps=25, output_type="np")

        def run(pipe, **kwargs):
            return lambda: pipe(labels, generator=torch.manual_seed(0), **common, **kwargs)

        runs = {"ours": run(our_pipe), "diffusers": run(their_pipe)}
        runs.update({f"ours, cache_interval={k}": run(our_pipe, cache_interval=k) for k in args.cache_intervals})
        times = interleaved(runs, max(3, args.repeats // 2))
        for variant in [key for key in runs if key != "diffusers"]:
            row = {"section": "pipeline", "model": f"{name} + VAE", "variant": variant, "batch": len(labels)}
            row["steps"] = 25
            rows.append(add_timings(row, {"ours": times[variant], "diffusers": times["diffusers"]}))
            print_row(row)
    return rows


def bench_video(args, rate: float) -> List[dict]:
    from diffusers import LatteTransformer3DModel

    from dit_pipelines import VideoDiTModel

    (width, pairs, heads), text_width, frames = VIDEO_SIZE, 64, 8
    torch.manual_seed(0)
    latte_shape = dict(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=4, out_channels=8)
    latte_blocks = dict(activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False)
    latte_text = dict(cross_attention_dim=width, attention_bias=True, caption_channels=text_width)
    latte_grid = dict(num_layers=pairs, sample_size=32, patch_size=2, norm_eps=1e-6, video_length=frames)
    theirs = LatteTransformer3DModel(**latte_shape, **latte_blocks, **latte_text, **latte_grid).eval()
    shape = dict(sample_size=32, sample_frames=frames, patch_size=2, in_channels=4, hidden_size=width, depth=pairs)
    conditioning = dict(text_embed_dim=text_width, conditioning="text", temporal_cross_attention=False)
    ours = VideoDiTModel(**shape, num_heads=heads, attention_layout="interleaved", **conditioning).eval()
    rows = []
    for batch in (1, 2):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 4, frames, 32, 32, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        text = torch.randn(batch, 16, text_width, generator=g)  # no padding, no mask: Latte's is not repeated per frame
        with torch.no_grad():
            runs = {"ours": lambda: ours(x, t, encoder_hidden_states=text)}
            runs["diffusers"] = lambda: theirs(x, timestep=t, encoder_hidden_states=text)
            times = interleaved(runs, args.repeats)
        row = {"section": "video", "model": f"Latte {pairs}+{pairs} blocks, width {width}", "batch": batch}
        flops = video_forward_flops(batch, frames, 256, width, pairs, text.shape[1], text_width)
        rows.append(add_timings(row, times, flops, rate))
        print_row(row)
    return rows


def print_row(row: dict) -> None:
    ours, theirs = row["ours"], row["diffusers"]
    extra = ""
    if "matmul_rate_fraction" in ours:
        fractions = ours["matmul_rate_fraction"], theirs["matmul_rate_fraction"]
        extra = "  of matmul rate: ours {:.0%}, diffusers {:.0%}".format(*fractions)
    if "peak_memory_mib" in ours:
        extra += f"  peak memory MiB: ours {ours['peak_memory_mib']:.0f}, diffusers {theirs['peak_memory_mib']:.0f}"
    label = row["model"] + (f" ({row['variant']})" if row.get("variant", "ours") != "ours" else "")
    print(
        f"{row['section']:<9}{label:<46}batch {row['batch']:>3}  ours {ours['median_s'] * 1e3:8.1f} ms "
        f"[{ours['min_s'] * 1e3:.1f}-{ours['max_s'] * 1e3:.1f}]  diffusers {theirs['median_s'] * 1e3:8.1f} ms "
        f"[{theirs['min_s'] * 1e3:.1f}-{theirs['max_s'] * 1e3:.1f}]  ratio {row['ratio']:.2f}x{extra}",
        flush=True,
    )


def main(args) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_sections(args)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again (tests share the process)


def run_sections(args) -> dict:
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return {}
    sections = args.only or ["forward", "train", "pipeline", "video"]
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {args.threads} thread(s): fp32 matmul {rate / 1e9:.1f} GFLOP/s", flush=True)
    forward_rate = rate if args.dtype == "float32" else matmul_rate(dtype=getattr(torch, args.dtype))
    if args.dtype != "float32":
        print(f"{args.dtype} matmul {forward_rate / 1e9:.1f} GFLOP/s (the forward rows' reference)", flush=True)
    rows = []
    if "forward" in sections:
        rows += bench_forward(args, forward_rate)
    if "train" in sections:
        rows += bench_train(args, rate)
    if "pipeline" in sections:
        rows += bench_pipeline(args)
    if "video" in sections:
        rows += bench_video(args, rate)
    result = {"threads": args.threads, "torch": torch.__version__, "matmul_flops": rate, "rows": rows}
    if args.dtype != "float32":
        result[f"{args.dtype}_matmul_flops"] = forward_rate
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(parse_args())
