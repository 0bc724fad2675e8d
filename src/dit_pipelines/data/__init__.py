"""Datasets a user trains on: labelled images and captioned videos."""

from .images import class_names, image_transform, label_index, load_image_dataset
from .video_files import ClipSampling, VideoClips, load_captioned_videos, write_video
from .videos import frames_as_tensor

__all__ = [
    "class_names",
    "frames_as_tensor",
    "image_transform",
    "label_index",
    "load_image_dataset",
    "load_captioned_videos",
    "write_video",
    "ClipSampling",
    "VideoClips",
]
