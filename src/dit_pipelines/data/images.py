"""Labelled image datasets for class-conditional training: a local image folder (class = sub-folder), a folder
saved with `datasets.save_to_disk`, or any `datasets` dataset, with the resize / crop / flip / [-1, 1] transform of
DiT."""

import os
from typing import Callable, List, Optional

import numpy as np
import torch
from PIL import Image

from ..latents import uint8_to_signed


def load_image_dataset(
    dataset: str,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    config_name: Optional[str] = None,
    cache_dir: Optional[str] = None,
):
    """One split of a labelled image dataset, checked to have `image_column` and `label_column`.

    `dataset` is a folder saved by `datasets.save_to_disk`, a folder of images in class sub-folders (`datasets`'
    imagefolder), or a name or path for `datasets.load_dataset`.

    >>> ds = load_image_dataset("path/to/images", split="train")  # doctest: +SKIP
    """
    import datasets

    if os.path.isdir(dataset) and any(
        os.path.exists(os.path.join(dataset, f)) for f in ("dataset_dict.json", "dataset_info.json")
    ):
        data = datasets.load_from_disk(dataset)
        data = data[split] if isinstance(data, datasets.DatasetDict) else data
    elif os.path.isdir(dataset):
        data = datasets.load_dataset("imagefolder", data_dir=dataset, split=split, cache_dir=cache_dir)
    else:
        data = datasets.load_dataset(dataset, config_name, split=split, cache_dir=cache_dir)
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in data.column_names:
            raise ValueError(
                f"The dataset {dataset!r} has no {role} column {column!r}; its columns are {data.column_names}. "
                f"Pass --{role}_column."
            )
    return data


def class_names(data, label_column: str = "label") -> List[str]:
    """Names of the classes, index -> name: a `ClassLabel`'s names, else the sorted distinct labels as strings
    (integer labels must then be 0..K-1)."""
    import datasets

    feature = data.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(data[label_column]))
    if all(isinstance(v, (int, np.integer)) for v in values):
        if values != list(range(len(values))):
            raise ValueError(f"Integer labels must be 0..K-1; column {label_column!r} has {values[:10]}...")
    return [str(v) for v in values]


def label_index(data, label_column: str = "label") -> Callable:
    """A function mapping a raw label of `data` to its class index."""
    names = class_names(data, label_column)
    feature = data.features[label_column]
    if type(feature).__name__ == "ClassLabel" or names == [str(i) for i in range(len(names))]:
        return int
    index = {name: i for i, name in enumerate(names)}
    return lambda value: index[str(value)]


def image_transform(resolution: int, channels: int, random_flip: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (channels, resolution, resolution) float tensor in [-1, 1]: resize the short side (bicubic)
    and center-crop, as DiT's ImageNet preprocessing, then optionally flip horizontally with probability 1/2.
    The training script flips on the batch instead, so that its randomness is in the checkpointed RNG."""
    mode = {1: "L", 3: "RGB"}[channels]

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert(mode)
        if image.size != (resolution, resolution):
            scale = resolution / min(image.size)
            size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
            image = image.resize(size, Image.BICUBIC)
            left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32).reshape(resolution, resolution, channels)
        tensor = uint8_to_signed(torch.from_numpy(array).permute(2, 0, 1))
        if random_flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        return tensor

    return transform
