"""What the Accelerate training scripts share: a resumable sharded sampler and atomic, rotating checkpoints."""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


class ShardedEpochSampler(Sampler[int]):
    """Indices of one process's share of each epoch, reshuffled every epoch from (seed, epoch) alone.

    An epoch is a permutation of the dataset cut into global batches of `batch_size * num_processes`; process r
    takes the r-th slice of each. The order depends on nothing but the seed and the epoch, so a run resumed at
    (epoch, batch) sees exactly the batches an uninterrupted run would (`set_position`), and no global RNG is used.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.num_processes = rank, num_processes
        self.batches_per_epoch = num_samples // (batch_size * num_processes)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The dataset has {num_samples} samples, fewer than one batch of {batch_size} x {num_processes} "
                "processes; lower --train_batch_size."
            )
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        step = self.batch_size * self.num_processes
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * step + self.rank * self.batch_size
            yield from order[start : start + self.batch_size].tolist()


def checkpoints(output_dir: str):
    """The complete checkpoints in `output_dir`, oldest first, as (step, path)."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(m.group(1)), os.path.join(output_dir, d)) for d in os.listdir(output_dir) if (m := CHECKPOINT.match(d))
    ]
    return sorted(found)


def resolve_resume_path(output_dir: str, resume_from_checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint to resume from: "latest" (none yet: start fresh) or an explicit path, which must exist."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoints(output_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder (no {STATE_FILE}); "
            f"pass 'latest' or one of {[p for _, p in checkpoints(output_dir)] or 'no checkpoints yet'}."
        )
    return resume_from_checkpoint


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: Optional[int] = None) -> str:
    """Save the full training state (model, optimizer, LR schedule, registered objects such as the EMA, and every
    process's RNG states) as `checkpoint-<step>`. It is written to `checkpoint-<step>.tmp` and renamed once complete,
    so a run killed while saving still resumes from the previous checkpoint. Keeps the newest `total_limit`."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    temporary = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)  # each process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        Path(temporary, STATE_FILE).write_text(json.dumps({"global_step": step, **state}, indent=2))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for _, old in checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def read_state(checkpoint: str) -> dict:
    return json.loads(Path(checkpoint, STATE_FILE).read_text())
