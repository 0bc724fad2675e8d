"""Files written whole or not at all, and JSON read back: what the resumable stages share (sample-batch's shards and
settings, the evaluator's feature cache, ADM batches, the sharded caches' manifests).

A file is written under a temporary name beside its target, `<path>.<pid>.tmp` (two processes writing the same file
never share one), flushed to disk, then renamed over the target (`os.replace`, atomic on POSIX): a killed writer
leaves the old file or the new one, never half of one, and at most a `.tmp` file behind.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "settings.json")
>>> read_json(path) is None
True
>>> write_json(path, {"seed": 0})
>>> read_json(path)
{'seed': 0}
"""

import json
import os
from typing import BinaryIO, Callable, Optional


def write_atomically(path: "str | os.PathLike", write: Callable[[BinaryIO], None]) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to disk, then renamed to `path`."""
    partial = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        with open(partial, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):  # the write failed: leave no debris
            os.remove(partial)


def write_json(path: "str | os.PathLike", data, **dump_options) -> None:
    """`data` as JSON (`json.dumps` options: indent, sort_keys, ...), written atomically."""
    write_atomically(path, lambda f: f.write(json.dumps(data, **dump_options).encode()))


def read_json(path: "str | os.PathLike") -> Optional[dict]:
    """The JSON in `path`, or None if there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
