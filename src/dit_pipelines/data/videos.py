"""Datasets of decoded clips: rows whose `video` is a uint8 array, (frames, height, width) for grayscale or (frames,
height, width, channels), gathered into one tensor. (Video files are read by `video_files`.)"""

import numpy as np
import torch


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
