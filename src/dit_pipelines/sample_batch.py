"""Sample a batch for FID: N images from a pipeline, written as an ADM-format `.npz` (`evaluation.batches`).

What `dit-pipelines sample-batch` runs, on one process or many under `accelerate launch`:

    dit-pipelines sample-batch outputs/dit --num_samples 50000 --output samples.npz
    accelerate launch --num_processes 8 -m dit_pipelines.cli sample-batch outputs/dit --num_samples 50000 \\
        --output samples.npz

The N samples are cut into fixed chunks of `batch_size` indices; those not yet sampled are dealt round-robin to the
processes. Sample i starts from its own generator, seeded from (seed, i) only, so the batch is the same for any
number of processes. Each
finished chunk is written atomically as a shard (`samples.npz.shards/chunk-00012.npz`): a run that is killed resumes
where it stopped, with any number of processes, and refuses to resume with other settings (`settings.json` in the
shard folder). When every shard is there the main process assembles `samples.npz` in index order, writes the
settings beside it (`samples.npz.json`) and removes the shards; asking again for a finished batch does nothing.

- `DiTImagePipeline`: class-balanced labels, sample i of class `labels[i % len(labels)]` (all classes by default;
  DiT's `sample_ddp.py` draws them at random), stored as `arr_1`.
- `DiTTextToVideoPipeline`: clip i shows `prompts[i % len(prompts)]` and each of its frames is one image of the
  batch, for frame-level FID; `arr_1` holds the prompt index of each frame.

Grayscale models give RGB images with the channel repeated.

>>> [list(indices) for indices in chunk_indices(num_samples=5, batch_size=2)]
[[0, 1], [2, 3], [4]]
>>> process_chunks(num_chunks=5, process_index=1, num_processes=2)
[1, 3]
>>> sample_seed(0, 7) == sample_seed(0, 7) != sample_seed(1, 7)
True
>>> settings = BatchSettings("outputs/dit", num_samples=8, batch_size=4)
>>> write_sample_batch(settings, "samples.npz")  # doctest: +SKIP
'samples.npz'
"""

import dataclasses
import os
import shutil
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .atomic_files import read_json, write_atomically, write_json
from .evaluation.batches import save_batch

SETTINGS = "settings.json"


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """What determines the samples of a batch; a run resumes only with the same settings."""

    pipeline: str  # a saved pipeline folder or a Hub repo id
    num_samples: int  # N: images, or clips for a video pipeline
    batch_size: int = 64  # samples per pipeline call and per shard
    seed: int = 0  # with the sample index, seeds each sample's generator
    guidance_scale: float = 1.5  # the FID protocol's classifier-free guidance (DiT, ADM)
    num_inference_steps: Optional[int] = None  # None: the scheduler's respacing
    cache_interval: Optional[int] = None  # feature caching (FORA); None: exact sampling
    guidance_channels: Optional[int] = None  # image pipelines: guide the first k channels (original DiT: 3 of 4)
    labels: Optional[Tuple[str, ...]] = None  # image pipelines: the classes to balance over (default all)
    prompts: Optional[Tuple[str, ...]] = None  # video pipelines: cycled over the clips
    num_frames: Optional[int] = None  # video pipelines: default the model's sample_frames

    @classmethod
    def from_arguments(cls, args) -> "BatchSettings":
        """The settings in parsed command-line arguments named as the fields (those absent take the defaults);
        `labels` a list, `prompts` the path of a prompts file."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        if given.get("labels") is not None:
            given["labels"] = tuple(given["labels"])
        if given.get("prompts") is not None:
            given["prompts"] = read_prompts(given["prompts"])
        return cls(**given)

    def check(self) -> None:
        """The `ValueError`s for settings that no pipeline can sample."""
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.labels is not None and not self.labels:
            raise ValueError("labels must name at least one class (or be left out for all classes).")
        if self.prompts is not None and not self.prompts:
            raise ValueError("the prompts file holds no prompt (one prompt per line).")

    def to_json(self) -> dict:
        """The settings as stored in `settings.json`: a local pipeline folder by its absolute path, tuples as lists."""
        stored = dataclasses.asdict(self)
        if os.path.isdir(self.pipeline):
            stored["pipeline"] = os.path.abspath(self.pipeline)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in stored.items()}


def read_prompts(path: str) -> Tuple[str, ...]:
    """The prompts of a file, one per line (blank lines skipped)."""
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path}: no such file (expected one prompt per line).")
    with open(path, encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip())


def chunk_indices(num_samples: int, batch_size: int) -> List[range]:
    """The sample indices of each chunk: [0, B), [B, 2B), ..., the last one shorter when B does not divide N."""
    return [range(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def process_chunks(num_chunks: int, process_index: int, num_processes: int) -> List[int]:
    """The chunks process `process_index` of `num_processes` samples: every `num_processes`-th, round-robin."""
    return list(range(process_index, num_chunks, num_processes))


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s generator: a 64-bit hash of (seed, index) (NumPy's `SeedSequence`), so that
    neighbouring seeds and indices give unrelated noise."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def sample_generators(seed: int, indices: range) -> list:
    """One CPU `torch.Generator` per sample of `indices` (the same noise on any device and process count)."""
    import torch

    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """(..., H, W, C) floats in [0, 1] -> (N, H, W, 3) uint8, as `numpy_to_pil` rounds; C = 1 is repeated."""
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"the pipeline gives {images.shape[-1]}-channel images; a batch holds RGB or grayscale.")
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8).reshape(-1, *images.shape[-3:])
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def class_balanced_samples(pipe, classes, seed: int, indices: range, **call) -> Tuple[np.ndarray, np.ndarray]:
    """Samples `indices` of a class-conditional image pipeline: sample i of class `classes[i % len(classes)]`
    from the noise of (seed, i); (n, H, W, 3) uint8 images and (n,) labels. `call`: the pipeline's arguments."""
    labels = np.array([classes[i % len(classes)] for i in indices], dtype=np.int64)
    images = pipe(labels.tolist(), generator=sample_generators(seed, indices), output_type="np", **call).images
    return to_uint8_rgb(images), labels  # images: (n, H, W, C) in [0, 1]


def shard_folder(output: str) -> str:
    return f"{output}.shards"


def shard_path(output: str, chunk: int) -> str:
    return os.path.join(shard_folder(output), f"chunk-{chunk:05d}.npz")


def _differences(stored: dict, wanted: dict) -> str:
    """The settings that differ, "name: old then new", each value cut to 40 characters (prompt lists are long)."""

    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {short(stored.get(k))} then {short(wanted.get(k))}" for k in keys)


def load_sampler(settings: BatchSettings):
    """The pipeline of `settings` and a function `sample(indices) -> (images (n, H, W, 3) uint8, labels (n,))`;
    a `ValueError` for a pipeline of another kind or options meant for the other kind."""
    from . import DiTImagePipeline, DiTTextToVideoPipeline
    from .pipelines.from_diffusers import load_pipeline

    pipe = load_pipeline(settings.pipeline)  # a diffusers DiTPipeline comes converted
    common = dict(
        guidance_scale=settings.guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        cache_interval=settings.cache_interval,
        output_type="np",
    )
    image_call = {k: v for k, v in common.items() if k != "output_type"}
    if settings.guidance_channels is not None:
        image_call["guidance_channels"] = settings.guidance_channels
    if isinstance(pipe, DiTImagePipeline):
        if settings.prompts is not None or settings.num_frames is not None:
            raise ValueError(f"{settings.pipeline} is an image pipeline: --prompts and --num_frames are for video.")
        num_classes = pipe.transformer.num_classes
        given = settings.labels or [str(k) for k in range(num_classes)]
        classes = [int(x) if x.isdigit() else pipe.get_label_ids(x)[0] for x in given]
        if any(not 0 <= k < num_classes for k in classes):
            raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] or names, got {list(given)}.")

        def sample(indices: range) -> Tuple[np.ndarray, np.ndarray]:
            return class_balanced_samples(pipe, classes, settings.seed, indices, **image_call)

    elif isinstance(pipe, DiTTextToVideoPipeline):
        if settings.labels is not None or settings.guidance_channels is not None:
            raise ValueError(
                f"{settings.pipeline} is a text-to-video pipeline: it takes --prompts, not --labels or "
                "--guidance_channels."
            )
        if settings.prompts is None:
            raise ValueError(f"{settings.pipeline} is a text-to-video pipeline: give --prompts FILE (one per line).")
        prompts = settings.prompts

        def sample(indices: range) -> Tuple[np.ndarray, np.ndarray]:
            which = [i % len(prompts) for i in indices]
            generator = sample_generators(settings.seed, indices)
            clips = pipe(
                [prompts[p] for p in which], num_frames=settings.num_frames, generator=generator, **common
            ).frames  # (n, F, H, W, C) in [0, 1]
            labels = np.repeat(np.array(which, dtype=np.int64), clips.shape[1])  # the prompt of each frame
            return to_uint8_rgb(clips), labels

    else:
        raise ValueError(f"{settings.pipeline} holds a {type(pipe).__name__}, not a dit_pipelines pipeline.")
    return pipe, sample


def _finished(settings: BatchSettings, output: str) -> bool:
    """Whether `output` is a finished batch of these settings; a `ValueError` when it is some other file."""
    if not os.path.exists(output):
        return False
    stored = read_json(f"{output}.json")
    in_progress = read_json(os.path.join(shard_folder(output), SETTINGS))
    if stored is None and in_progress == settings.to_json():
        return False  # killed between writing the batch and its settings: assemble again
    if stored == settings.to_json() and os.path.isdir(shard_folder(output)):
        shutil.rmtree(shard_folder(output))  # a clean-up that was cut short: the batch itself is complete
    elif os.path.isdir(shard_folder(output)):
        return False
    if stored is None:
        raise ValueError(f"{output} exists and was not written by sample-batch: remove it or choose another --output.")
    if stored != settings.to_json():
        raise ValueError(
            f"{output} exists with other settings ({_differences(stored, settings.to_json())}): remove it and "
            f"{output}.json, or choose another --output."
        )
    return True


def _start_or_resume(settings: BatchSettings, output: str, is_main: bool) -> None:
    """Create the shard folder with `settings.json`, or check that an existing one has the same settings."""
    path = os.path.join(shard_folder(output), SETTINGS)
    stored = read_json(path)
    folder = shard_folder(output)
    if stored is None and os.path.isdir(folder) and any(name.startswith("chunk-") for name in os.listdir(folder)):
        raise ValueError(f"{folder} holds shards but no {SETTINGS}: remove the folder to start over.")
    if stored is not None and stored != settings.to_json():
        raise ValueError(
            f"{shard_folder(output)} holds an unfinished run with other settings "
            f"({_differences(stored, settings.to_json())}): resume with those, or remove the folder to start over."
        )
    if stored is None and is_main:
        os.makedirs(shard_folder(output), exist_ok=True)
        write_json(path, settings.to_json(), indent=2)


def _shard_images(paths: List[str]) -> Iterator[np.ndarray]:
    for path in paths:
        with np.load(path) as shard:
            yield shard["images"]


def assemble(settings: BatchSettings, output: str, num_chunks: int) -> str:
    """Stream the shards into `output` in index order, write `output.json` and remove the shard folder."""
    paths = [shard_path(output, k) for k in range(num_chunks)]
    missing = [k for k, path in enumerate(paths) if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"{shard_folder(output)} lacks the shards of chunks {missing[:10]}: rerun to sample them.")
    labels = []
    for path in paths:
        with np.load(path) as shard:
            labels.append(shard["labels"])
    labels = np.concatenate(labels)
    save_batch(output, _shard_images(paths), labels=labels, count=len(labels))
    write_json(f"{output}.json", settings.to_json(), indent=2)
    trash = f"{shard_folder(output)}.removing"  # out of the way first: a kill in rmtree leaves no half folder
    os.replace(shard_folder(output), trash)
    shutil.rmtree(trash)
    return output


def process_state():
    """accelerate's `PartialState`, on the CPU when `ACCELERATE_USE_CPU=1` (which only `Accelerator` reads) or when
    there is no accelerator: otherwise launched CPU processes would each see themselves alone, and all sample
    everything."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available())


def write_sample_batch(settings: BatchSettings, output: str, compile: bool = False) -> str:
    """Sample the batch of `settings` into `output` (an `.npz`) on this process's share of the chunks, resuming
    from the shards a killed run left; returns `output`. Under `accelerate launch` every process calls it.

    `compile`: run the transformer through `torch.compile` (inductor; the first call compiles, about 15 s on 2 CPU
    cores). It fuses the elementwise work between the matmuls, which dominates small models: 1.5x faster sampling
    of a width-64, 6-block DiT on 2 CPU cores (`benchmarks/RESULTS.md`). Only float rounding changes (outputs within
    1e-4 of eager), so it is not one of the `BatchSettings`: a run may resume with or without it."""
    from tqdm.auto import tqdm

    settings.check()
    if not output.endswith(".npz"):
        raise ValueError(f"--output must end in .npz (ADM's batch layout), got {output}.")
    if _finished(settings, output):
        return output
    state = process_state()
    with state.main_process_first():  # a Hub pipeline is downloaded once
        pipe, sample = load_sampler(settings)
    pipe.to(state.device)
    pipe.set_progress_bar_config(disable=True)
    if compile:
        pipe.transformer.compile()  # in place: the pipeline keeps its own module (and its config and hooks)
    _start_or_resume(settings, output, state.is_main_process)
    state.wait_for_everyone()

    chunks = chunk_indices(settings.num_samples, settings.batch_size)
    missing = [k for k in range(len(chunks)) if not os.path.isfile(shard_path(output, k))]
    state.wait_for_everyone()  # every process has listed the same missing chunks before any is written
    todo = [missing[i] for i in process_chunks(len(missing), state.process_index, state.num_processes)]
    done = f"chunks ({len(chunks) - len(missing)} of {len(chunks)} done before)"
    progress = tqdm(total=len(todo), desc=done, disable=not state.is_main_process)
    for k in todo:
        images, labels = sample(chunks[k])
        write_atomically(shard_path(output, k), lambda f: np.savez(f, images=images, labels=labels))
        progress.update()
    progress.close()

    state.wait_for_everyone()
    if state.is_main_process:
        assemble(settings, output, len(chunks))
    state.wait_for_everyone()
    return output
