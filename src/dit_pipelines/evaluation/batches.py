"""Sample and reference batches in the `.npz` layout of ADM's evaluator (openai/guided-diffusion `evaluations/`).

A batch holds `arr_0`, uint8 images of shape (N, H, W, 3) (RGB, channels last), optionally `arr_1`, the class
labels (N,), and, for the published reference batches, the Inception statistics of the whole dataset: `mu`,
`sigma` (pool features) and `mu_s`, `sigma_s` (spatial features). When a reference holds statistics, FID and sFID
use them and the images serve precision and recall only, as ADM's evaluator does.

Batches are written and read in chunks: a 50,000-image 256x256 batch is 9.8 GB, more than it is worth holding
twice in memory. NumPy's `np.load` reads a whole `.npz` member at once, so `iter_images` reads the member's `.npy`
stream itself (the header through `np.lib.format`, then the rows).

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "samples.npz")
>>> images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
>>> _ = save_batch(path, [images[:2], images[2:]], labels=np.arange(5), count=5)
>>> [chunk.shape for chunk in iter_images(path, batch_size=4)]
[(4, 8, 8, 3), (1, 8, 8, 3)]
>>> batch_info(path).count
5
"""

import os
import zipfile
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from ..atomic_files import write_atomically

IMAGES = "arr_0"
LABELS = "arr_1"
STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")
LAYOUT = "'arr_0': uint8 images of shape (N, H, W, 3), RGB, channels last"


@dataclass
class BatchInfo:
    """What a batch file holds, read from its headers only."""

    path: str
    count: int  # N
    image_shape: Tuple[int, int, int]  # (H, W, 3)
    has_labels: bool
    has_statistics: bool  # mu, sigma, mu_s and sigma_s all present


def _member(name: str) -> str:
    return f"{name}.npy"


def _read_header(stream) -> Tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)  # (shape, fortran_order, dtype)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f".npy format {version[0]}.{version[1]} is not supported (1.0 and 2.0 are; re-save with NumPy)")


def batch_info(path: str) -> BatchInfo:
    """Check that `path` is an ADM-format batch and say what it holds; a clear `ValueError` otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (expected an .npz batch with {LAYOUT})")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an .npz file (expected {LAYOUT})") from None
    with archive:
        names = set(archive.namelist())
        if _member(IMAGES) not in names:
            raise ValueError(f"{path} has no 'arr_0' (expected {LAYOUT}); it holds {sorted(names)}")
        with archive.open(_member(IMAGES)) as stream:
            shape, fortran, dtype = _read_header(stream)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
            what = f"{dtype} of shape {tuple(shape)}" + (" in Fortran order" if fortran else "")
            hint = " (channels first? use N, H, W, 3)" if len(shape) == 4 and shape[1] == 3 else ""
            raise ValueError(f"{path}: 'arr_0' is {what}{hint}; expected {LAYOUT}")
        has_statistics = all(_member(name) in names for name in STATISTICS)
        return BatchInfo(path, shape[0], tuple(shape[1:]), _member(LABELS) in names, has_statistics)


def iter_images(path: str, batch_size: int = 64) -> Iterator[np.ndarray]:
    """The images of a batch in chunks of `batch_size` (N, H, W, 3) uint8, without loading the whole array."""
    info = batch_info(path)
    row_bytes = int(np.prod(info.image_shape))
    with zipfile.ZipFile(path) as archive, archive.open(_member(IMAGES)) as stream:
        _read_header(stream)
        for start in range(0, info.count, batch_size):
            rows = min(batch_size, info.count - start)
            data = stream.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise ValueError(f"{path}: 'arr_0' ends after {start} of {info.count} images (truncated file)")
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(rows, *info.image_shape)  # writable


def load_statistics(path: str) -> Optional[Dict[str, np.ndarray]]:
    """The stored `mu`, `sigma`, `mu_s`, `sigma_s` of a reference batch (float64), or None when it has none."""
    if not batch_info(path).has_statistics:
        return None
    with np.load(path) as data:
        return {name: data[name].astype(np.float64) for name in STATISTICS}


def load_labels(path: str) -> Optional[np.ndarray]:
    """The class labels `arr_1` of a batch, or None."""
    if not batch_info(path).has_labels:
        return None
    with np.load(path) as data:
        return data[LABELS]


def save_batch(
    path: str,
    images: Union[np.ndarray, Iterable[np.ndarray]],
    labels: Optional[np.ndarray] = None,
    statistics: Optional[Dict[str, np.ndarray]] = None,
    count: Optional[int] = None,
) -> str:
    """Write an ADM-format batch. `images` is one (N, H, W, 3) uint8 array, or an iterable of such chunks with
    their total `count` (written as they come, so a batch larger than memory is assembled from shards); `labels`
    (N,) become `arr_1`; `statistics` (`mu`, `sigma`, `mu_s`, `sigma_s`) are stored for use as a reference. The
    file appears under its name only when complete."""
    if isinstance(images, np.ndarray):
        images, count = [images], len(images)
    elif count is None:
        raise ValueError("save_batch needs `count` when the images come in chunks")
    write_atomically(path, lambda file: _write_archive(file, images, count, labels, statistics))
    return path


def _write_archive(file, images, count, labels, statistics) -> None:
    """The zip members of `save_batch`: the images streamed chunk by chunk, then the labels and statistics."""
    with zipfile.ZipFile(file, "w", allowZip64=True) as archive:
        with archive.open(_member(IMAGES), "w", force_zip64=True) as stream:
            written, shape = 0, None
            for chunk in images:
                chunk = np.ascontiguousarray(chunk)
                if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
                    raise ValueError(f"images must be uint8 (N, H, W, 3), got {chunk.dtype} {chunk.shape}")
                if shape is None:
                    shape = chunk.shape[1:]
                    header = {"descr": "|u1", "fortran_order": False, "shape": (count, *shape)}
                    np.lib.format.write_array_header_2_0(stream, header)
                elif chunk.shape[1:] != shape:
                    raise ValueError(f"image chunks differ in shape: {shape} then {chunk.shape[1:]}")
                stream.write(chunk.tobytes())
                written += len(chunk)
            if written != count or shape is None:
                raise ValueError(f"save_batch was told {count} images and got {written}")
        arrays = {} if labels is None else {LABELS: np.asarray(labels)}
        arrays.update(statistics or {})
        for name, array in arrays.items():
            with archive.open(_member(name), "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asarray(array), allow_pickle=False)
