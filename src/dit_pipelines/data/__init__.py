"""Datasets a user trains on: labelled images and captioned videos."""

from .images import class_names, image_transform, label_index, load_image_dataset
from .videos import frames_as_tensor, load_video_dataset

__all__ = [
    "class_names",
    "frames_as_tensor",
    "image_transform",
    "label_index",
    "load_image_dataset",
    "load_video_dataset",
]
