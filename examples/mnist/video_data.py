"""The sandbox's text-to-video data: Moving-MNIST clips generated from the real MNIST digits, saved as the
`datasets` folder `training/train_video_dit.py --dataset` reads (video, caption, caption_parts, image_caption)."""

import numpy as np

from .mnist_data import load_mnist
from .moving_mnist import held_out_pairs, make_moving_mnist


def add_moving_mnist_args(p) -> None:
    data = p.add_argument_group("Moving-MNIST clips")
    data.add_argument("--num_clips", type=int, default=20000, help="clips to generate")
    data.add_argument("--num_frames", type=int, default=8, help="frames per clip")
    data.add_argument("--frame_size", type=int, default=32)
    data.add_argument("--digit_size", type=int, default=16)
    data.add_argument("--speed", type=int, default=2, help="pixels per frame")
    data.add_argument("--max_digits", type=int, default=1)
    data.add_argument(
        "--include_held_out", action="store_true", help="also train on the held-out (digit, direction) prompts"
    )


def make_clips(args, split: str = "train"):
    """Clips from MNIST `split`, deterministic in `args.seed`, without the held-out prompts unless asked."""
    mnist = load_mnist()[split].with_format("numpy")[:]
    return make_moving_mnist(
        np.stack(mnist["image"]),
        np.asarray(mnist["label"]),
        args.num_clips,
        num_frames=args.num_frames,
        frame_size=args.frame_size,
        digit_size=args.digit_size,
        speed=args.speed,
        max_digits=args.max_digits,
        seed=args.seed,
        exclude=None if args.include_held_out else held_out_pairs(),
    )


def save_clips(args, folder: str) -> str:
    """`make_clips(args)` saved with `save_to_disk` into `folder`, replacing what a run with other options left
    there (10,000 clips take a few seconds). Returns `folder`."""
    make_clips(args).save_to_disk(folder)
    return folder


def every_caption(clips) -> list:
    """Every caption a model trained on `clips` sees: whole captions, their parts and the frames' captions."""
    parts = [p for row in clips["caption_parts"] for p in row]
    return sorted(set(clips["caption"]) | set(parts) | set(clips["image_caption"]))
