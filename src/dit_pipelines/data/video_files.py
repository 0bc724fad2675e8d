"""Captioned video files for text-to-video training, in the `datasets` convention: a `videofolder` (video files plus a
`metadata.jsonl` with `file_name` and a caption column) or any dataset with a video column and a caption column.

    data = load_captioned_videos(train_data_dir="my_clips", caption_column="text")
    clips = VideoClips(data, ClipSampling(num_frames=16, frame_stride=2, height=256, width=256))
    clips[0]["video"].shape   # (3, 16, 256, 256) uint8

Videos are decoded with PyAV (`av`), whose PyPI wheels carry their own FFmpeg: `datasets`' `Video` feature decodes
through torchcodec, which needs FFmpeg's shared libraries installed on the system, so the video column is read as
file paths (`Video(decode=False)`) and decoded here, in the DataLoader's workers. A video column may also hold
decoded frames, (F, H, W) or (F, H, W, C) uint8 arrays, which then go through the same frame selection and crop.
"""

import io
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("dit_pipelines.data")

CLIP_STARTS = ("random", "center", "first")


@dataclass(frozen=True)
class ClipSampling:
    """Which frames of a video make a training clip, at what size."""

    num_frames: int  # frames per clip
    height: int  # frames are resized (shorter side first) and centre-cropped to height x width
    width: int
    frame_stride: int = 1  # take every k-th frame of the video ...
    fps: Optional[float] = None  # ... or the stride that brings the video's frame rate nearest to `fps`
    clip_start: str = "random"  # where the clip starts: a new random frame each epoch, the centred window, frame 0
    channels: int = 3  # 3: RGB; 1: grayscale
    seed: int = 0  # the random starts are a function of (seed, epoch, index) alone

    def __post_init__(self):
        if self.clip_start not in CLIP_STARTS:
            raise ValueError(f"clip_start must be one of {CLIP_STARTS}, got {self.clip_start!r}.")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}.")
        if min(self.num_frames, self.height, self.width, self.frame_stride) < 1 or (
            self.fps is not None and self.fps <= 0
        ):
            raise ValueError(f"num_frames, height, width, frame_stride and fps must be positive: {self}.")

    def stride(self, video_fps: Optional[float]) -> int:
        """The frame stride for a video of `video_fps` frames per second."""
        if self.fps is None or not video_fps:
            return self.frame_stride
        return max(1, round(video_fps / self.fps))

    def span(self, stride: int) -> int:
        """Frames of the video a clip covers: (num_frames - 1) * stride + 1."""
        return (self.num_frames - 1) * stride + 1

    def start(self, num_video_frames: int, stride: int, epoch: int, index: int) -> int:
        last = num_video_frames - self.span(stride)
        if self.clip_start == "first" or last <= 0:
            return 0
        if self.clip_start == "center":
            return last // 2
        return int(np.random.default_rng([self.seed, epoch, index]).integers(0, last + 1))


def load_captioned_videos(
    train_data_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
    dataset_config: Optional[str] = None,
    split: str = "train",
    video_column: str = "video",
    caption_column: str = "caption",
):
    """One split of a captioned video dataset with its video column as file references (not decoded), checked to
    have the video and caption columns. `train_data_dir` is a `videofolder`; `dataset_name` a `datasets` name or
    repo id, or a folder saved with `save_to_disk`."""
    import datasets

    if (train_data_dir is None) == (dataset_name is None):
        raise ValueError("Pass exactly one of --train_data_dir (a videofolder) and --dataset_name.")
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a folder.")
        data = datasets.load_dataset("videofolder", data_dir=train_data_dir, split=split)
        source = train_data_dir
    elif os.path.isfile(os.path.join(dataset_name, "dataset_info.json")) or os.path.isfile(
        os.path.join(dataset_name, "dataset_dict.json")
    ):
        data = datasets.load_from_disk(dataset_name)
        data, source = (data[split] if isinstance(data, datasets.DatasetDict) else data), dataset_name
    else:
        data, source = datasets.load_dataset(dataset_name, dataset_config, split=split), dataset_name
    for kind, column in (("video", video_column), ("caption", caption_column)):
        if column not in data.column_names:
            raise ValueError(
                f"The dataset {source!r} has no {kind} column {column!r}; its columns are {data.column_names} "
                f"(choose with --{kind}_column)."
            )
    if isinstance(data.features[video_column], datasets.Video):
        data = data.cast_column(video_column, datasets.Video(decode=False))
    return data


VideoSource = Union[str, dict, np.ndarray]


def _open(source: VideoSource):
    import av

    if isinstance(source, dict):  # a datasets Video value: {"path", "bytes"}
        source = io.BytesIO(source["bytes"]) if source.get("bytes") else source["path"]
    return av.open(source)


def source_name(source) -> str:
    """How a video is named in logs and errors: its path, else what it is."""
    if isinstance(source, dict):
        return source.get("path") or "<video bytes>"
    return source if isinstance(source, str) else f"<frames {getattr(source, 'shape', '?')}>"


def probe_video(source: VideoSource) -> Tuple[int, Optional[float]]:
    """(number of frames, frames per second) of a video, read from its container header where it says (else by
    counting packets, which decodes nothing). Raises what PyAV raises for a file it cannot read."""
    if not isinstance(source, (str, dict)):
        return len(source), None
    with _open(source) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        rate = stream.average_rate or stream.guessed_rate
        return int(frames), (float(rate) if rate else None)


def decode_frames(source: VideoSource, indices: List[int], channels: int = 3) -> np.ndarray:
    """Frames `indices` (increasing) of a video as (len(indices), H, W, channels) uint8. Decodes from the first
    frame and stops after the last one wanted: exact for any stream, at a cost that grows with the clip's start."""
    if not isinstance(source, (str, dict)):  # decoded frames already
        frames = np.asarray(source, dtype=np.uint8)
        frames = frames[..., None] if frames.ndim == 3 else frames
        frames = frames[indices]
        if frames.shape[-1] != channels:
            frames = _convert_channels(frames, channels)
        return frames
    wanted, out, i = set(indices), {}, -1
    with _open(source) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                array = frame.to_ndarray(format="rgb24" if channels == 3 else "gray")
                out[i] = array if channels == 3 else array[..., None]
            if i >= indices[-1]:
                break
    if len(out) < len(indices):
        raise ValueError(f"{source_name(source)} has only {i + 1} decodable frames; frame {indices[-1]} was asked for.")
    return np.stack([out[i] for i in indices])


def _convert_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3:  # RGBA -> RGB, grayscale -> RGB
        return frames[..., :3] if frames.shape[-1] >= 3 else np.repeat(frames[..., :1], 3, axis=-1)
    weights = np.array([0.299, 0.587, 0.114])  # RGB -> luma, ITU-R BT.601 (what FFmpeg's "gray" uses)
    return np.round(frames[..., :3] @ weights).clip(0, 255).astype(np.uint8)[..., None]


def resize_and_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, H, W, C) uint8 frames -> (C, F, height, width) uint8: scaled (antialiased bilinear) until both sides
    cover the target, then centre-cropped, as diffusers' training scripts do with Resize + CenterCrop. Frames
    already of the target size are returned untouched."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (F, C, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        x = x[:, :, top : top + height, left : left + width]
    return x.permute(1, 0, 2, 3).contiguous()


class VideoClips(torch.utils.data.Dataset):
    """The clips of a captioned video dataset, decoded on demand (in DataLoader workers): {"video": (C, F, H, W)
    uint8, "caption": str, plus any `extra_columns`}.

    Every video is probed once when the dataset is built (frame count and rate, from the header): videos shorter
    than a clip's span and files that cannot be opened are left out and counted in the log (`on_bad_clip="skip"`)
    or raise a `ValueError` naming the file (`"error"`); a dataset with no usable video is an error either way.
    Indices may be `(epoch, index)` pairs (`epoch_keys`): a random clip start is then drawn anew each epoch, from
    (seed, epoch, index) alone, so a resumed run decodes the clips an uninterrupted one would."""

    epoch_keys = True

    @staticmethod
    def collate_fn(items: list) -> dict:
        return collate_clips(items)

    def __init__(
        self,
        data,
        sampling: ClipSampling,
        video_column: str = "video",
        caption_column: str = "caption",
        extra_columns: Tuple[str, ...] = (),
        on_bad_clip: str = "skip",
        num_workers: int = 0,
    ):
        if on_bad_clip not in ("skip", "error"):
            raise ValueError(f"on_bad_clip must be 'skip' or 'error', got {on_bad_clip!r}.")
        self.data, self.sampling, self.on_bad_clip = data, sampling, on_bad_clip
        self.video_column, self.caption_column, self.extra_columns = video_column, caption_column, extra_columns
        probes = _probe_all(data, video_column, num_workers)
        usable, problems = [], []
        for i, (frames, fps, error) in enumerate(probes):
            span = sampling.span(sampling.stride(fps))
            if error is None and frames < span:
                error = f"{frames} frames, fewer than the {span} a clip spans"
            if error is None:
                usable.append(i)
                continue
            problem = f"{source_name(data[i][video_column])}: {error}"
            if on_bad_clip == "error":
                raise ValueError(f"Cannot make a clip of {problem} (pass --on_bad_clip skip to leave such videos out).")
            problems.append(problem)
        if not usable:
            raise ValueError(
                f"None of the {len(data)} videos gives a clip of {sampling.num_frames} frames; the first: "
                f"{problems[0]}."
            )
        if problems:
            logger.warning("Skipped %d of %d videos; the first: %s", len(problems), len(data), problems[0])
        self.skipped = len(problems)
        self.rows = np.asarray(usable, dtype=np.int64)
        self.frame_counts = np.asarray([probes[i][0] for i in usable], dtype=np.int64)
        self.rates = [probes[i][1] for i in usable]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.data[int(self.rows[index])]
        sampling = self.sampling
        stride = sampling.stride(self.rates[index])
        start = sampling.start(int(self.frame_counts[index]), stride, epoch, index)
        indices = list(range(start, start + sampling.span(stride), stride))
        try:
            frames = decode_frames(row[self.video_column], indices, sampling.channels)
        except Exception as error:  # a file whose header reads but whose frames do not
            raise ValueError(f"Could not decode {source_name(row[self.video_column])}: {error}") from error
        item = {"video": resize_and_crop(frames, sampling.height, sampling.width), "caption": row[self.caption_column]}
        item.update({column: row[column] for column in self.extra_columns})
        return item

    def stored_format(self) -> Tuple[int, int, int]:
        """(height, width, channels) of the first usable video as stored: decoded frames say their channels (an
        (F, H, W) array has one), files have one if their pixel format is grayscale, else 3."""
        source = self.data[int(self.rows[0])][self.video_column]
        if not isinstance(source, (str, dict)):
            frames = np.asarray(source)
            return frames.shape[1], frames.shape[2], 1 if frames.ndim == 3 else frames.shape[-1]
        with _open(source) as container:
            stream = container.streams.video[0]
            gray = (stream.codec_context.pix_fmt or "").startswith("gray")
            return stream.codec_context.height, stream.codec_context.width, 1 if gray else 3


class _Probe(torch.utils.data.Dataset):
    def __init__(self, data, column):
        self.data, self.column = data, column

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        try:
            return (*probe_video(self.data[i][self.column]), None)
        except Exception as error:  # any file PyAV cannot open: reported by the caller
            return 0, None, f"{type(error).__name__}: {error}"


def _probe_all(data, column, num_workers: int) -> list:
    """`probe_video` of every row, as (frames, fps, error or None), in `num_workers` processes."""
    # its own generator: iterating a loader draws a seed, which must not come from the training run's global RNG
    loader = torch.utils.data.DataLoader(
        _Probe(data, column), batch_size=64, num_workers=num_workers, collate_fn=list, generator=torch.Generator()
    )
    return [probe for rows in loader for probe in rows]


def collate_clips(items: list) -> dict:
    """A batch of `VideoClips` items: clips stacked (B, C, F, H, W), everything else as lists."""
    batch = {key: [item[key] for item in items] for key in items[0]}
    batch["video"] = torch.stack(batch["video"])
    return batch


def write_video(path: str, frames: np.ndarray, fps: float = 8, crf: Optional[int] = None) -> str:
    """Write (F, H, W, 3) uint8 RGB frames (or (F, H, W) grayscale, stored as RGB) as an H.264 mp4 with PyAV (even
    H and W; `crf` 0 is lossless in luma, libx264's default 23 is not): how the sandbox and the tests make video
    files. Returns `path`."""
    from fractions import Fraction

    import av

    frames = _convert_channels(frames[..., None], 3) if frames.ndim == 3 else frames
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        stream.codec_context.thread_count = 1  # a few small frames: threads cost more than they save (3x here)
        if crf is not None:
            stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    return path
