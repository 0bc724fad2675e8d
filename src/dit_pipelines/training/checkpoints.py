"""Atomic, rotating training checkpoints (`checkpoint-<step>` folders of `accelerator.save_state`) and resuming."""

import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


def checkpoints(output_dir: str) -> List[Tuple[int, str]]:
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
    """The run state saved with a checkpoint (its step, batch size and process count)."""
    return json.loads(Path(checkpoint, STATE_FILE).read_text())
