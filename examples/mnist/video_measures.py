"""Prompt following of text-to-video models on Moving-MNIST prompts ("the digit 3 moves up and to the left"):
does a clip show the requested digit, and does it move the requested way?

- Digit: every frame is cropped to a `digit_size` window around its intensity centroid, scaled back to 28x28
  (the clips' digits are whole MNIST images scaled to `digit_size`) and read by the MNIST classifier of
  `examples.mnist.classifier`; the clip's digit is the majority vote over its frames.
- Direction: the centroid's displacement from the first frame to the last, per axis, as a sign (-1, 0, +1), with
  displacements under `min_travel` pixels counting as no motion; it must equal the direction's (dx, dy).

>>> import torch
>>> video = torch.zeros(1, 3, 16, 16)
>>> for f in range(3):  # a 4x4 square moving 3 px right and 3 px up per frame
...     video[0, f, 9 - 3 * f : 13 - 3 * f, 2 + 3 * f : 6 + 3 * f] = 1
>>> centroids(video)[0, :, 0].tolist(), motion_signs(centroids(video)).tolist()
([3.5, 6.5, 9.5], [[1, -1]])
>>> directions_agree(motion_signs(centroids(video)), ["up and to the right"]).tolist()
[True]
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F

from .moving_mnist import DIRECTIONS


def centroids(video: torch.Tensor) -> torch.Tensor:
    """(N, F, 2) intensity centroids (x, y) in pixels of a video (N, F, H, W) with values in [0, 1]."""
    weights = video.clamp(min=0).double()
    total = weights.sum((2, 3)).clamp(min=1e-8)
    ys = torch.arange(video.shape[2], dtype=torch.float64)
    xs = torch.arange(video.shape[3], dtype=torch.float64)
    x = (weights.sum(2) * xs).sum(-1) / total
    y = (weights.sum(3) * ys).sum(-1) / total
    return torch.stack([x, y], -1).float()


def digit_crops(video: torch.Tensor, digit_size: int) -> torch.Tensor:
    """(N, F, 1, 28, 28): each frame's `digit_size` window around its centroid (kept inside the frame; zero
    padding where the frame is smaller), scaled to MNIST's 28x28."""
    n, frames, height, width = video.shape
    centres = centroids(video).round().long()
    padded = F.pad(video, (digit_size,) * 4)  # windows near the border stay in bounds
    crops = torch.empty(n, frames, digit_size, digit_size)
    for i in range(n):
        for f in range(frames):
            x0 = int(centres[i, f, 0].clamp(digit_size // 2, max(width - (digit_size + 1) // 2, digit_size // 2)))
            y0 = int(centres[i, f, 1].clamp(digit_size // 2, max(height - (digit_size + 1) // 2, digit_size // 2)))
            top, left = y0 - digit_size // 2 + digit_size, x0 - digit_size // 2 + digit_size
            crops[i, f] = padded[i, f, top : top + digit_size, left : left + digit_size]
    scaled = F.interpolate(crops.flatten(0, 1)[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    return scaled.clamp(0, 1).unflatten(0, (n, frames))


@torch.no_grad()
def predicted_digits(classifier, video: torch.Tensor, digit_size: int) -> torch.Tensor:
    """(N,) the digit each clip shows: the majority vote of the classifier over its frames (ties: the smallest)."""
    crops = digit_crops(video, digit_size)
    per_frame = classifier.eval()(crops.flatten(0, 1)).argmax(-1).unflatten(0, crops.shape[:2])  # (N, F)
    votes = F.one_hot(per_frame, 10).sum(1)  # (N, 10)
    return votes.argmax(-1)


def motion_signs(centres: torch.Tensor, min_travel: float = 3.0) -> torch.Tensor:
    """(N, 2) sign of the (x, y) centroid displacement from the first frame to the last of (N, F, 2) centroids;
    0 where it is under `min_travel` pixels."""
    travel = centres[:, -1] - centres[:, 0]
    return torch.where(travel.abs() < min_travel, torch.zeros_like(travel), travel.sign()).long()


def directions_agree(signs: torch.Tensor, directions: Sequence[str]) -> torch.Tensor:
    """(N,) whether each clip's motion signs equal its requested direction's (dx, dy) (y grows downwards)."""
    wanted = torch.tensor([DIRECTIONS[name] for name in directions])
    return (signs == wanted).all(-1)


def prompt_following(
    classifier, video: torch.Tensor, digits: List[int], directions: List[str], digit_size: int, min_travel: float = 3.0
) -> dict:
    """Per-clip verdicts and rates for single-digit clips `video` (N, F, H, W) in [0, 1] that were asked to show
    `digits[i]` moving `directions[i]`."""
    predicted = predicted_digits(classifier, video, digit_size)
    digit_ok = predicted == torch.tensor(digits)
    direction_ok = directions_agree(motion_signs(centroids(video), min_travel), directions)
    return {
        "digit_accuracy": digit_ok.float().mean().item(),
        "direction_accuracy": direction_ok.float().mean().item(),
        "both": (digit_ok & direction_ok).float().mean().item(),
        "predicted_digits": predicted.tolist(),
        "digit_ok": digit_ok.tolist(),
        "direction_ok": direction_ok.tolist(),
    }
