"""Captioned video datasets for text-to-video training: a folder saved with `datasets.save_to_disk` whose rows have a
`video` uint8 array, (frames, height, width) for grayscale or (frames, height, width, channels), and a `caption`;
optional columns refine the captions (see `training/train_video_dit.py`)."""

import numpy as np
import torch


def load_video_dataset(path: str, split: str = "train", video_column: str = "video", caption_column: str = "caption"):
    """One split of a saved video dataset, checked to have its video and caption columns."""
    import datasets

    data = datasets.load_from_disk(path)
    data = data[split] if isinstance(data, datasets.DatasetDict) else data
    for column in (video_column, caption_column):
        if column not in data.column_names:
            raise ValueError(f"The dataset {path!r} has no {column!r} column; it has {data.column_names}.")
    return data


def frames_as_tensor(data, video_column: str = "video") -> torch.Tensor:
    """All clips of `data` as one uint8 tensor (N, C, F, H, W), the layout of the video models: clips stored as
    (F, H, W) have one channel, clips stored as (F, H, W, C) keep their C."""
    video = torch.from_numpy(np.asarray(data.with_format("numpy")[video_column][:], dtype=np.uint8))
    if video.ndim == 4:
        return video[:, None]
    if video.ndim == 5:
        return video.permute(0, 4, 1, 2, 3)
    raise ValueError(
        f"Clips must be (frames, height, width) or (frames, height, width, channels) arrays; the {video_column!r} "
        f"column holds arrays of shape {tuple(video.shape[1:])}."
    )
