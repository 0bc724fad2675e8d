"""The output folder of a run: checked writable and locked before any work (one run per folder), and the final
pipeline written into it atomically."""

import atexit
import json
import os
import shutil
import socket
from typing import Optional

LOCK_FILE = ".training.lock"
STAGING = ".pipeline.tmp"  # the final pipeline is written here, then moved into place


class RunLock:
    """An exclusive claim on a run folder: `LOCK_FILE` names the holder's host and process. A second run on the
    folder is refused with a `ValueError` naming that process; a lock whose process on this host is gone (a run
    that was killed) is stale and taken over. Released by `release()` or at interpreter exit."""

    def __init__(self, folder: str):
        self.folder, self.path = folder, os.path.join(folder, LOCK_FILE)
        self.held = False

    def acquire(self) -> "RunLock":
        try:
            os.makedirs(self.folder, exist_ok=True)
            self._create()
        except FileExistsError:
            holder = self._holder()
            if holder is not None and not _is_stale(holder):
                raise ValueError(
                    f"{self.folder} is in use by another run (process {holder.get('pid')} on {holder.get('host')}, "
                    f"lock file {self.path}): give this run another --output_dir, wait for that one, or delete the "
                    "lock file if that run is gone (a lock from another host cannot be checked from here)."
                ) from None
            os.remove(self.path)  # stale: its process is gone
            try:
                self._create()
            except FileExistsError:  # another run took it over at the same moment
                raise ValueError(f"{self.folder} was just claimed by another run (lock file {self.path}).") from None
        except OSError as error:  # not writable, a file in the way, a full disk: before any work
            raise ValueError(f"--output_dir {self.folder} cannot be written ({error.strerror or error}).") from None
        self.held = True
        atexit.register(self.release)
        return self

    def release(self) -> None:
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False

    def _create(self) -> None:
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(descriptor, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)

    def _holder(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # unreadable: treated as stale


def _is_stale(holder: dict) -> bool:
    """Whether the process that wrote a lock is gone (only known for this host; other hosts' locks stand), or is
    this one (a run in this process that ended with an error, before its lock was released)."""
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("pid") == os.getpid():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def save_pipeline_atomically(pipeline, folder: str) -> None:
    """`pipeline.save_pretrained` into `folder/.pipeline.tmp`, then each part moved into `folder`, the
    `model_index.json` that makes the folder loadable last (an old one is removed before the first part moves): a
    run killed while saving leaves the folder as the last complete save left it (killed while writing, the long
    part) or without a loadable pipeline (killed while moving), never with a half-written or mixed one."""
    staging = os.path.join(folder, STAGING)
    if os.path.exists(staging):
        shutil.rmtree(staging)
    try:
        pipeline.save_pretrained(staging)
    except OSError as error:
        raise OSError(f"Could not write the pipeline to {staging}: {error}") from error
    index = os.path.join(folder, "model_index.json")
    if os.path.exists(index):  # from here until the new index is in place the folder is no loadable pipeline
        os.remove(index)
    for name in sorted(os.listdir(staging), key=lambda n: n == "model_index.json"):
        target = os.path.join(folder, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
