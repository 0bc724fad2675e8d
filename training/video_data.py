"""Text-to-video training data: the Moving-MNIST clips (generated offline from the real digits) or a saved
`datasets` folder with `video` (F, H, W) uint8 and `caption` columns."""

import numpy as np

from dit_pipelines.data import load_mnist
from dit_pipelines.data.moving_mnist import held_out_pairs, make_moving_mnist


def add_video_data_args(p) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="moving_mnist", help="'moving_mnist' (generated) or a save_to_disk folder")
    data.add_argument("--num_clips", type=int, default=20000, help="moving_mnist: clips to generate")
    data.add_argument("--num_frames", type=int, default=8, help="frames per clip")
    data.add_argument("--frame_size", type=int, default=32)
    data.add_argument("--digit_size", type=int, default=16)
    data.add_argument("--speed", type=int, default=2, help="pixels per frame")
    data.add_argument("--max_digits", type=int, default=1)
    data.add_argument("--include_held_out", action="store_true",
                      help="also train on the held-out (digit, direction) prompts")  # fmt: skip


def load_clips(args, split: str = "train"):
    """The training clips: generated from MNIST `split` (deterministic in --seed), or loaded from disk."""
    import datasets

    if args.dataset != "moving_mnist":
        data = datasets.load_from_disk(args.dataset)
        data = data["train"] if isinstance(data, datasets.DatasetDict) else data
        for column in ("video", "caption"):
            if column not in data.column_names:
                raise ValueError(f"The dataset {args.dataset!r} has no {column!r} column; it has {data.column_names}.")
        return data
    mnist = load_mnist()[split].with_format("numpy")[:]
    return make_moving_mnist(
        np.stack(mnist["image"]), np.asarray(mnist["label"]), args.num_clips, num_frames=args.num_frames,
        frame_size=args.frame_size, digit_size=args.digit_size, speed=args.speed, max_digits=args.max_digits,
        seed=args.seed, exclude=None if args.include_held_out else held_out_pairs(),
    )  # fmt: skip


def frames_as_tensor(data):
    """All clips as a uint8 tensor (N, F, H, W)."""
    import torch

    return torch.from_numpy(np.asarray(data.with_format("numpy")["video"][:], dtype=np.uint8))
