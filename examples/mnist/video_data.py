"""The sandbox's text-to-video data: Moving-MNIST clips generated from the real MNIST digits, written as a user's
data would be: a videofolder of RGB mp4 files plus `metadata.jsonl` (file_name, caption, caption_parts,
image_caption), which `training/train_video_dit.py --train_data_dir` reads."""

import json
import os
import shutil

import numpy as np

from dit_pipelines.data.video_files import write_video
from dit_pipelines.training import every_caption  # noqa: F401 (the sandbox's T5 learns these captions' words)

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


def save_clips(args, folder: str, fps: int = 8) -> str:
    """`make_clips(args)` written into `folder` as a videofolder, replacing what a run with other options left
    there: one mp4 a clip (grey digits stored as RGB, H.264 at crf 0, so that they decode to the generated pixels
    within the colour conversion's rounding) and metadata.jsonl. Returns `folder`."""
    clips = make_clips(args)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    columns = ("caption", "caption_parts", "image_caption")
    with open(os.path.join(folder, "metadata.jsonl"), "w") as metadata:
        for i, row in enumerate(clips):
            name = f"clip-{i:05d}.mp4"
            write_video(os.path.join(folder, name), np.asarray(row["video"], dtype=np.uint8), fps=fps, crf=0)
            metadata.write(json.dumps({"file_name": name, **{c: row[c] for c in columns}}) + "\n")
    return folder
