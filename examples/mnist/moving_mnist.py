"""Text-to-video data made offline from the real MNIST digits: Moving-MNIST-style clips (Srivastava et al., 2015)
of one or two digits travelling in straight lines, captioned with what happens ("the digit 3 moves up and to the
left"). Deterministic given a seed; digits never leave the frame, so every caption stays true to the end.

>>> import numpy as np
>>> from examples.mnist.moving_mnist import make_moving_mnist
>>> digits = np.zeros((10, 28, 28), np.uint8); digits[:, 10:18, 10:18] = 255
>>> clips = make_moving_mnist(digits, np.arange(10), num_clips=4, seed=0)
>>> clips[0]["caption"], np.asarray(clips[0]["video"]).shape
('the digit 8 moves up and to the right', (8, 32, 32))
"""

from typing import Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image

#: name -> (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS = {
    "up": (0, -1),
    "down": (0, 1),
    "left": (-1, 0),
    "right": (1, 0),
    "up and to the left": (-1, -1),
    "up and to the right": (1, -1),
    "down and to the left": (-1, 1),
    "down and to the right": (1, 1),
}
DIRECTION_NAMES = list(DIRECTIONS)


def caption(digits: Sequence[int], directions: Sequence[str]) -> str:
    """ "the digit 3 moves up", or for two digits "the digit 3 moves up and the digit 5 moves left"."""
    return " and ".join(f"the digit {d} moves {w}" for d, w in zip(digits, directions))


def digit_caption(digit: int) -> str:
    """ "the digit 3": what a single frame shows (joint image-video training), and a clip's digit alone."""
    return f"the digit {digit}"


def caption_parts(digits: Sequence[int], directions: Sequence[str]) -> List[str]:
    """A one-digit clip's caption cut to its digit ("the digit 3") and to its motion ("a digit moves up"): each part
    carries one half of the meaning, so that a model trained on them too composes pairs it never saw. None for
    clips of two digits (their whole caption is kept)."""
    return [digit_caption(digits[0]), f"a digit moves {directions[0]}"] if len(digits) == 1 else []


def held_out_pairs(num_digits: int = 10) -> Set[Tuple[int, str]]:
    """(digit, direction) pairs kept out of training, one per digit, to test prompts never seen in training."""
    return {(d, DIRECTION_NAMES[(3 * d) % len(DIRECTION_NAMES)]) for d in range(num_digits)}


def seen_pairs(num_digits: int = 10) -> Set[Tuple[int, str]]:
    """One training (digit, direction) pair per digit, the opposite direction index of its held-out one: prompts to
    choose sampler settings on without looking at the held-out ones."""
    return {(d, DIRECTION_NAMES[(3 * d + 4) % len(DIRECTION_NAMES)]) for d in range(num_digits)}


def render(digit_images: Sequence[np.ndarray], starts, directions, num_frames, frame_size, speed) -> np.ndarray:
    """(F, S, S) uint8 frames; overlapping digits combine by maximum."""
    video = np.zeros((num_frames, frame_size, frame_size), np.uint8)
    size = digit_images[0].shape[0]
    for image, (x0, y0), name in zip(digit_images, starts, directions):
        dx, dy = DIRECTIONS[name]
        for f in range(num_frames):
            x, y = x0 + dx * speed * f, y0 + dy * speed * f
            window = video[f, y : y + size, x : x + size]
            np.maximum(window, image, out=window)
    return video


def make_moving_mnist(
    images: np.ndarray,
    labels: np.ndarray,
    num_clips: int,
    num_frames: int = 8,
    frame_size: int = 32,
    digit_size: int = 16,
    speed: int = 2,
    max_digits: int = 1,
    seed: int = 0,
    exclude: Optional[Iterable[Tuple[int, str]]] = None,
    only: Optional[Iterable[Tuple[int, str]]] = None,
):
    """A `datasets.Dataset` of `num_clips` clips with columns `video` ((F, S, S) uint8), `caption`, `digits`,
    `directions`, `caption_parts` and `image_caption` (see `caption_parts`), drawn from MNIST `images`
    (N, 28, 28) uint8 with `labels`.

    Each clip has 1..`max_digits` digits, resized to `digit_size`, moving `speed` pixels per frame in one of 8
    directions from a start that keeps them inside the frame. `exclude` skips (digit, direction) pairs (held-out
    prompts); `only` keeps just those pairs."""
    import datasets

    travel = speed * (num_frames - 1)
    if travel > frame_size - digit_size:
        raise ValueError(
            f"{num_frames} frames at {speed} px/frame travel {travel} px, more than the {frame_size - digit_size} px "
            f"a {digit_size} px digit has in a {frame_size} px frame."
        )
    rng = np.random.default_rng(seed)
    exclude, only = set(exclude or ()), None if only is None else set(only)
    small = {}

    def digit(index):
        if index not in small:
            small[index] = np.asarray(Image.fromarray(images[index]).resize((digit_size, digit_size), Image.BILINEAR))
        return small[index]

    rows = {"video": [], "caption": [], "digits": [], "directions": [], "caption_parts": [], "image_caption": []}
    while len(rows["caption"]) < num_clips:
        count = int(rng.integers(1, max_digits + 1))
        picks = rng.integers(0, len(images), size=count)
        names = [DIRECTION_NAMES[i] for i in rng.integers(0, len(DIRECTION_NAMES), size=count)]
        pairs = [(int(labels[i]), w) for i, w in zip(picks, names)]
        if any(p in exclude for p in pairs) or (only is not None and not all(p in only for p in pairs)):
            continue
        starts = []
        for name in names:
            lo = [max(0, -d * travel) for d in DIRECTIONS[name]]
            hi = [frame_size - digit_size - max(0, d * travel) for d in DIRECTIONS[name]]
            starts.append(tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi)))
        rows["video"].append(render([digit(i) for i in picks], starts, names, num_frames, frame_size, speed))
        rows["caption"].append(caption([d for d, _ in pairs], names))
        rows["digits"].append([d for d, _ in pairs])
        rows["directions"].append(names)
        rows["caption_parts"].append(caption_parts(rows["digits"][-1], names))
        rows["image_caption"].append(digit_caption(pairs[0][0]))
    features = datasets.Features(
        {
            "video": datasets.Array3D(shape=(num_frames, frame_size, frame_size), dtype="uint8"),
            "caption": datasets.Value("string"),
            "digits": datasets.Sequence(datasets.Value("int64")),
            "directions": datasets.Sequence(datasets.Value("string")),
            "caption_parts": datasets.Sequence(datasets.Value("string")),
            "image_caption": datasets.Value("string"),
        }
    )
    rows["video"] = np.stack(rows["video"])
    return datasets.Dataset.from_dict(rows, features=features)
