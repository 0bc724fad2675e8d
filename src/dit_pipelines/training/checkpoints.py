"""Atomic, rotating training checkpoints (`checkpoint-<step>` folders of `accelerator.save_state`, plus the EMA as
safetensors and JSON) and resuming from them without unpickling anything that could run code."""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from safetensors.torch import load_file, save_file

from .sharding import full_tensors, shard_like

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"  # written last: a folder without it is not a complete checkpoint
EMA_WEIGHTS, EMA_STATE = "ema.safetensors", "ema_state.json"


def checkpoints(output_dir: str) -> List[Tuple[int, str]]:
    """The complete checkpoints in `output_dir` (those with their state file), oldest first, as (step, path)."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(m.group(1)), os.path.join(output_dir, d)) for d in os.listdir(output_dir) if (m := CHECKPOINT.match(d))
    ]
    return sorted((step, path) for step, path in found if os.path.isfile(os.path.join(path, STATE_FILE)))


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


def save_checkpoint(
    accelerator,
    output_dir: str,
    step: int,
    state: dict,
    total_limit: Optional[int] = None,
    write_extra: Optional[Callable[[str], None]] = None,
) -> str:
    """Save the full training state (model, optimizer, LR schedule and every process's RNG states, with
    `accelerator.save_state`; then `write_extra(folder)` on every process, e.g. `save_ema`) as
    `checkpoint-<step>`. It is written to `checkpoint-<step>.tmp` and renamed once complete, so a run killed while
    saving still resumes from the previous checkpoint. Keeps the newest `total_limit`."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    temporary = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(temporary)  # each process writes its own RNG state
        if write_extra is not None:  # on every process (it may gather sharded weights)
            write_extra(temporary)
    except OSError as error:  # a full disk, a lost permission: say where, not only "iostream error"
        raise OSError(f"Could not write checkpoint-{step} into {temporary}: {error}") from error
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


def save_ema(ema, names: Sequence[str], folder: str, write: bool = True) -> None:
    """The EMA of diffusers' `EMAModel` as `ema.safetensors` (its shadow weights, by parameter name, whole even when
    FSDP shards them) and `ema_state.json` (decay, step and warm-up settings): no pickle, unlike accelerate's
    registered objects. Every process calls it (sharded weights are gathered); those with `write` write."""
    state = ema.state_dict()
    shadow = full_tensors(state.pop("shadow_params"))
    if write:
        weights = {name: tensor.cpu().contiguous() for name, tensor in zip(names, shadow)}
        save_file(weights, f"{folder}/{EMA_WEIGHTS}")
        Path(folder, EMA_STATE).write_text(json.dumps(state, indent=2))


def load_ema(ema, names: Sequence[str], folder: str) -> None:
    """Restore an EMA saved by `save_ema` (a `ValueError` for a checkpoint without one), each weight sharded like
    the shadow weight it replaces."""
    if not os.path.isfile(os.path.join(folder, EMA_WEIGHTS)):
        raise ValueError(f"{folder} has no {EMA_WEIGHTS}: not a checkpoint of this version's training loop.")
    weights = load_file(os.path.join(folder, EMA_WEIGHTS))
    state = json.loads(Path(folder, EMA_STATE).read_text())
    shadow = [shard_like(weights[name], like) for name, like in zip(names, ema.shadow_params)]
    ema.load_state_dict({**state, "shadow_params": shadow})


def unsafe_to_load(accelerator, folder: str) -> Optional[str]:
    """Why this process must not load `folder`, or None: pickled custom objects (the EMA of checkpoints written
    before it moved to safetensors), or an RNG state that `torch.load(weights_only=True)` cannot read. Checked
    before `load_state`, which has barriers: every process can then agree to skip a checkpoint (the loop gathers
    these answers) instead of some waiting for others that failed."""
    from accelerate.utils import load

    pickled = sorted(name for name in os.listdir(folder) if re.match(r"^custom_checkpoint_\d+\.pkl$", name))
    if pickled:
        return (
            f"{folder} holds {', '.join(pickled)}: objects that only unpickling with code execution can read (an EMA "
            "saved before it moved to safetensors). They are not loaded: resume from a checkpoint of this version."
        )
    random_states = os.path.join(folder, f"random_states_{accelerator.process_index}.pkl")
    try:
        if os.path.exists(random_states):  # absent for a process the run did not have: accelerate goes on without
            load(random_states)  # weights_only=True, with the numpy types accelerate allows
    except Exception as error:
        return f"{random_states} cannot be read safely ({type(error).__name__}): not resuming from it."
    return None


def load_checkpoint(accelerator, folder: str, restore_extra: Optional[Callable[[str], None]] = None) -> int:
    """Load `folder` (see `save_checkpoint`) and return its step. accelerate reads the optimizer, schedule and RNG
    states with `torch.load(weights_only=True)`, and nothing is registered with it to be unpickled freely. A folder
    with pickled custom objects (the EMA of checkpoints written before it moved to safetensors), or whose RNG state
    cannot be read that way (accelerate would go on without it, and the resumed run would not be exact), is a
    `ValueError` naming the file (`unsafe_to_load`)."""
    problem = unsafe_to_load(accelerator, folder)
    if problem:
        raise ValueError(problem)
    accelerator.load_state(folder)
    if restore_extra is not None:
        restore_extra(folder)
    return read_state(folder)["global_step"]


def resume_candidates(output_dir: str, resume_from_checkpoint: Optional[str]) -> List[str]:
    """The checkpoints to try, in order: the explicit one, or for "latest" every complete one, newest first."""
    if resume_from_checkpoint == "latest":
        return [path for _, path in reversed(checkpoints(output_dir))]
    path = resolve_resume_path(output_dir, resume_from_checkpoint)
    return [path] if path else []
