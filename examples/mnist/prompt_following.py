"""Prompt following of a trained text-to-video pipeline on the held-out Moving-MNIST prompts.

    python -m examples.mnist.prompt_following --pipeline outputs/t2v --clips_per_prompt 10

For each (digit, direction) pair kept out of training (`held_out_pairs()`: one direction per digit, so the
prompts are new combinations of words seen in training), generates `clips_per_prompt` clips of "the digit d moves
<direction>" and reports how many show the requested digit (per-frame MNIST classifier, majority vote) and move
the requested way (sign of the centroid displacement per axis), beside the same measures on real clips of the same
prompts made from the MNIST test digits (the ceiling of the measure). Writes JSON, a GIF with one clip per prompt
side by side, and a PNG of its frames (one row per prompt); for the held-out prompts of a pipeline folder, also the
`EvaluationRecord` its model card shows.

`--prompts seen` measures prompts that did occur in training instead (`seen_pairs()`, one per digit): choose
sampler settings there, then report the held-out prompts.
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler  # also registers the classes with diffusers
from dit_pipelines.data import frames_as_tensor
from dit_pipelines.evaluation import EvaluationRecord, Metric

from .classifier import load_classifier, mnist_tensors
from .moving_mnist import caption, held_out_pairs, make_moving_mnist, seen_pairs
from .video_measures import prompt_following


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a saved DiTTextToVideoPipeline folder or Hub repo id")
    p.add_argument("--clips_per_prompt", type=int, default=10)
    p.add_argument(
        "--prompts",
        choices=["held_out", "seen"],
        default="held_out",
        help="the held-out (digit, direction) pairs, or one pair per digit seen in training",
    )
    p.add_argument("--num_frames", type=int, default=None, help="default: the frames the model was trained on")
    p.add_argument("--digit_size", type=int, default=16, help="the digits' size in the training clips")
    p.add_argument("--speed", type=int, default=2, help="the training clips' pixels per frame (real clips)")
    p.add_argument("--guidance_scale", type=float, default=4.0)
    p.add_argument("--num_inference_steps", type=int, default=None, help="default: the scheduler's respacing")
    p.add_argument("--scheduler", choices=["saved", "ddpm", "ddim"], default="saved")
    p.add_argument("--cache_interval", type=int, default=None, help="feature caching (FORA): blocks every k steps")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default=None, help="default: <pipeline>/prompt_following when a folder")
    return p.parse_args(argv)


def prompt_pairs(clips_per_prompt: int, which: str = "held_out"):
    """(digits, directions), `clips_per_prompt` of each pair of the held-out or the seen set."""
    pairs = sorted(held_out_pairs() if which == "held_out" else seen_pairs())
    digits = [d for d, _ in pairs for _ in range(clips_per_prompt)]
    directions = [w for _, w in pairs for _ in range(clips_per_prompt)]
    return digits, directions


def generate(pipe, prompts, args):
    """(N, F, H, W) clips in [0, 1] for `prompts`, in batches."""
    clips = []
    for start in range(0, len(prompts), args.batch_size):
        frames = pipe(
            prompts[start : start + args.batch_size],
            num_frames=args.num_frames,
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.num_inference_steps,
            cache_interval=args.cache_interval,
            generator=torch.Generator().manual_seed(args.seed + start),
            output_type="np",
        ).frames  # (B, F, H, W, C)
        clips.append(torch.from_numpy(frames).mean(-1))
    return torch.cat(clips)


def real_clips(digits, directions, num_frames, frame_size, args):
    """Clips of the same prompts from the MNIST test digits, in [0, 1]."""
    images, labels = mnist_tensors("test")
    images = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    clips = []
    for d, w in sorted(set(zip(digits, directions))):
        data = make_moving_mnist(
            images,
            labels.numpy(),
            args.clips_per_prompt,
            num_frames=num_frames,
            frame_size=frame_size,
            digit_size=args.digit_size,
            speed=args.speed,
            seed=args.seed + d,
            only={(d, w)},
        )
        clips.append(frames_as_tensor(data)[:, 0].float() / 255)  # (N, F, H, W): one channel
    return torch.cat(clips)


def save_figure(clips, prompts_per_row, folder, name):
    """A GIF with one clip per prompt side by side, and a PNG of its frames (a row per prompt)."""
    from diffusers.utils import export_to_gif
    from PIL import Image

    chosen = clips[:: len(clips) // prompts_per_row][:prompts_per_row]  # the first clip of each prompt
    pixels = (chosen.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (P, F, H, W)
    gap = np.full((pixels.shape[2], 2), 128, np.uint8)
    frames = [np.concatenate([x for clip in pixels for x in (clip[f], gap)], 1) for f in range(pixels.shape[1])]
    export_to_gif([Image.fromarray(f) for f in frames], os.path.join(folder, f"{name}.gif"), fps=4)
    rows = [np.concatenate([x for frame in clip for x in (frame, gap)], 1) for clip in pixels]
    Image.fromarray(np.concatenate(rows, 0)).resize(
        (rows[0].shape[1] * 2, len(rows) * pixels.shape[2] * 2), Image.NEAREST
    ).save(os.path.join(folder, f"{name}.png"))


def card_record(result: dict, sample: str) -> EvaluationRecord:
    """The figures a model card shows, from a held-out run's `result`."""
    generated, real = result["generated"], result["real"]
    metrics = [
        Metric("right digit (per-frame MNIST classifier, majority vote)", generated["digit_accuracy"], "{:.1%}"),
        Metric("right direction (centroid displacement signs)", generated["direction_accuracy"], "{:.1%}"),
        Metric("both", generated["both"], "{:.1%}"),
        Metric("the same measures on real clips: digit", real["digit_accuracy"], "{:.1%}"),
        Metric("the same measures on real clips: direction", real["direction_accuracy"], "{:.1%}"),
    ]
    keys = ("clips", "guidance_scale", "scheduler", "num_inference_steps", "cache_interval")
    settings = {"prompts": "held-out (digit, direction) pairs", **{k: result[k] for k in keys if result[k] is not None}}
    description = (
        "Measured with `examples/mnist/prompt_following.py` of dit_pipelines on the (digit, direction) prompts held "
        "out of training: a classifier trained on the real MNIST digits reads every frame (cropped around the "
        "intensity centroid; majority vote), and the sign of the centroid's displacement per axis gives the direction."
    )
    return EvaluationRecord("prompt_following", metrics, settings, description, sample=sample)


def main(args) -> dict:
    from diffusers import DiffusionPipeline

    torch.manual_seed(args.seed)
    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    if args.scheduler != "saved":
        kind = DiTDDPMScheduler if args.scheduler == "ddpm" else DiTDDIMScheduler
        pipe.scheduler = kind.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    args.num_frames = args.num_frames or pipe.transformer.config.sample_frames
    classifier = load_classifier()
    digits, directions = prompt_pairs(args.clips_per_prompt, args.prompts)
    prompts = [caption([d], [w]) for d, w in zip(digits, directions)]

    start = time.perf_counter()
    generated = generate(pipe, prompts, args)
    seconds = time.perf_counter() - start
    real = real_clips(digits, directions, args.num_frames, generated.shape[-1], args)
    result = {
        "pipeline": args.pipeline,
        "clips": len(prompts),
        "num_frames": args.num_frames,
        "prompt_set": args.prompts,
        "guidance_scale": args.guidance_scale,
        "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": len(pipe.scheduler.timesteps),  # the steps the last call took
        "cache_interval": args.cache_interval,
        "generated": prompt_following(classifier, generated, digits, directions, args.digit_size),
        "real": prompt_following(classifier, real, digits, directions, args.digit_size),
        "seconds_per_clip": seconds / len(prompts),
        "prompts": prompts,
    }
    is_folder = os.path.isdir(args.pipeline)
    folder = args.output_dir or (os.path.join(args.pipeline, "prompt_following") if is_folder else "prompt_following")
    os.makedirs(folder, exist_ok=True)
    figure = f"{args.prompts}_prompts"
    save_figure(generated, len(set(prompts)), folder, figure)
    suffix = "" if args.prompts == "held_out" else f"_{args.prompts}"
    with open(os.path.join(folder, f"prompt_following{suffix}.json"), "w") as f:
        json.dump(result, f, indent=2)
    if is_folder and args.prompts == "held_out":
        card_record(result, os.path.relpath(os.path.join(folder, figure + ".gif"), args.pipeline)).save(args.pipeline)

    prompt_set = args.prompts.replace("_", "-")
    print(
        f"{len(prompts)} clips of {args.num_frames} frames, {len(set(prompts))} {prompt_set} prompts, "
        f"guidance {args.guidance_scale}, {result['seconds_per_clip']:.2f} s/clip"
    )
    print(f"{'':<12}{'digit':>8}{'direction':>11}{'both':>8}")
    for name in ("generated", "real"):
        r = result[name]
        print(f"{name:<12}{r['digit_accuracy']:>8.1%}{r['direction_accuracy']:>11.1%}{r['both']:>8.1%}")
    print(f"figure: {os.path.abspath(os.path.join(folder, figure + '.gif'))}")
    return result


if __name__ == "__main__":
    main(parse_args())
