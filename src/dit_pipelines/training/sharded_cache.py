"""On-disk caches of per-sample tensors, for training on datasets of any size: the VAE posteriors of
`--precompute_latents` and the T5 caption embeddings of `--precompute_text_embeddings`.

    cache = fill_cache("cache", "latents", key, num_samples, {"latents": Field((2, 4, 32, 32), torch.float32)},
                       compute=lambda rows: {"latents": encode(rows)}, process_index=rank, num_processes=world,
                       wait=accelerator.wait_for_everyone)
    batch = cache.read([5, 17, 3])["latents"]    # (3, 2, 4, 32, 32)

Layout: `<root>/<name>-<hash of key>/manifest.json` (the key, the sample count, the fields) and
`shard-00000.safetensors`, ... each holding a contiguous range of samples, field by field. A field of fixed shape is
one tensor (n, *shape); a field of rows of varying length (shape `(None, d)`, e.g. a caption's unpadded tokens) is
its rows concatenated plus `<name>.offsets` (n + 1,).

- Written by every process at once, each its own shards (shard k by process k mod P), each written to a temporary
  file and renamed into place: a killed run leaves complete shards and at most a partial temporary one per process;
  the next run keeps the complete ones (their headers checked) and redoes the rest. The manifest says `complete`
  only once every shard is there.
- The key (dataset fingerprint, encoder identity, sizes, flips, ...) names the folder and is stored in it: a cache
  is reused only by a run asking for the very same key, and its fields are checked against what the run needs.
- Read with positioned reads (`os.pread`) at offsets taken from each shard's safetensors header, not memory-mapped:
  the pages of a mapped file count towards the process's resident memory as they are touched, so an epoch over a
  13 GB mapped cache would grow the RSS towards 13 GB; with `pread` the OS page cache still caches the files while
  the process holds one batch (`benchmarks/latent_cache.py` measures both). Opening checks every shard's header
  (count, shapes, dtypes, file size) and, streaming it in chunks, that every float is finite.
"""

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..atomic_files import read_json, write_json

logger = logging.getLogger("dit_pipelines.training")

FORMAT_VERSION = 1
SHARD_BYTES = 64 << 20  # samples per shard: about this many bytes of them
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class Field:
    """What a cache stores of each sample: a tensor of `shape` and `dtype`; a leading None in `shape` marks rows of
    varying length (`(None, d)`: any number of d-vectors)."""

    shape: Tuple[Optional[int], ...]
    dtype: torch.dtype

    @property
    def ragged(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    def describe(self) -> list:
        return [list(self.shape), _NAMES[self.dtype]]

    def sample_bytes(self) -> int:
        """Bytes per sample (ragged fields: per row, times a guess of 64 rows)."""
        rows = [64 if s is None else s for s in self.shape]
        return math.prod(rows) * self.dtype.itemsize


def cache_folder(root: str, name: str, key: dict) -> str:
    """Where the cache of `key` lives under `root`."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, f"{name}-{digest}")


def fill_cache(
    root: str,
    name: str,
    key: dict,
    num_samples: int,
    fields: Dict[str, Field],
    compute: Callable[[range], Dict[str, object]],
    process_index: int = 0,
    num_processes: int = 1,
    wait: Callable[[], None] = lambda: None,
    shard_size: Optional[int] = None,
) -> "ShardedCache":
    """The cache of `key` under `root`, written now where it is missing or incomplete, and opened.

    `compute(rows)` returns, for the sample indices `rows` (a range), each field as a tensor (len(rows), *shape) or,
    for a ragged field, a list of len(rows) tensors. Every process calls this (`wait` is the barrier between them,
    `accelerator.wait_for_everyone`); each computes its own shards."""
    if num_samples < 1:
        raise ValueError(f"A cache needs at least one sample, got {num_samples}.")
    shard_size = shard_size or max(1, SHARD_BYTES // sum(f.sample_bytes() for f in fields.values()))
    folder = cache_folder(root, name, key)
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "num_samples": num_samples,
        "shard_size": shard_size,
        "fields": {k: f.describe() for k, f in fields.items()},
    }
    os.makedirs(folder, exist_ok=True)
    found = _read_manifest(folder)
    if found is not None and {k: v for k, v in found.items() if k != "complete"} != manifest:
        raise ValueError(f"The cache {folder} was written for another configuration: {_difference(found, manifest)}.")
    if found is None or not found.get("complete"):
        if process_index == 0 and found is None:
            write_json(os.path.join(folder, "manifest.json"), manifest, indent=1, sort_keys=True)
        num_shards = math.ceil(num_samples / shard_size)
        kept = written = 0
        mine = range(process_index, num_shards, num_processes)
        for shard in tqdm(mine, desc=f"writing the {name} cache", disable=process_index != 0, leave=False):
            rows = range(shard * shard_size, min(num_samples, (shard + 1) * shard_size))
            path = _shard_path(folder, shard)
            if os.path.exists(path) and _shard_problem(path, fields, len(rows)) is None:
                kept += 1
                continue
            tensors = _as_stored(compute(rows), fields, len(rows))
            partial = f"{path}.{os.getpid()}.tmp"
            save_file(tensors, partial)
            os.replace(partial, path)  # atomic: a shard is either complete or absent
            written += 1
        logger.info("Cache %s: process %d kept %d complete shards, wrote %d", folder, process_index, kept, written)
        wait()
        if process_index == 0:
            missing = [s for s in range(num_shards) if not os.path.exists(_shard_path(folder, s))]
            if missing:
                raise RuntimeError(f"Cache {folder}: shards {missing[:5]} were not written by their processes.")
            for leftover in (f for f in os.listdir(folder) if f.endswith(".tmp")):
                os.remove(os.path.join(folder, leftover))  # partial shards of killed runs
            write_json(os.path.join(folder, "manifest.json"), {**manifest, "complete": True}, indent=1, sort_keys=True)
        wait()
    return ShardedCache(folder, key, fields)


class ShardedCache:
    """A complete cache, checked when opened (see the module docstring); `read(indices)` returns its samples."""

    def __init__(self, folder: str, key: Optional[dict] = None, fields: Optional[Dict[str, Field]] = None):
        manifest = _read_manifest(folder)
        if manifest is None or not manifest.get("complete"):
            raise ValueError(f"{folder} is not a complete cache (no manifest saying so): write it with fill_cache.")
        if key is not None and manifest["key"] != key:
            raise ValueError(f"The cache {folder} was written for another configuration: {_difference(manifest, key)}.")
        stored = {k: Field(tuple(s), _DTYPES[d]) for k, (s, d) in manifest["fields"].items()}
        if fields is not None and stored != fields:
            raise ValueError(
                f"The cache {folder} holds {manifest['fields']}, but this run needs "
                f"{ {k: f.describe() for k, f in fields.items()} }."
            )
        self.folder, self.fields, self.key = folder, stored, manifest["key"]
        self._files: Dict[str, int] = {}
        self._checked = False
        self.num_samples, self.shard_size = manifest["num_samples"], manifest["shard_size"]
        self.shards = []
        for shard in range(math.ceil(self.num_samples / self.shard_size)):
            path = _shard_path(folder, shard)
            count = min(self.shard_size, self.num_samples - shard * self.shard_size)
            problem = _shard_problem(path, stored, count) if os.path.exists(path) else "missing"
            if problem:
                raise ValueError(f"The cache shard {path} is unusable ({problem}); delete {folder} to rewrite it.")
            header, data_start = _read_header(path)
            offsets = {
                k: self._read_whole(path, header[f"{k}.offsets"], data_start) for k, f in stored.items() if f.ragged
            }
            self.shards.append((path, header, data_start, offsets))
        # where each field's data starts in each shard's file
        self.starts = {k: [data_start + h[k]["data_offsets"][0] for _, h, data_start, _ in self.shards] for k in stored}
        self._check_finite()  # read in order, with the kernel's read-ahead
        self._checked = True

    def __len__(self) -> int:
        return self.num_samples

    def read(self, indices: Sequence[int]) -> Dict[str, object]:
        """The samples `indices`: each fixed field as one tensor (len(indices), *shape), read into one buffer; each
        ragged field as a list of (rows, d) tensors."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self.num_samples:
                raise IndexError(f"Sample {i} of a cache of {self.num_samples}.")
        out = {}
        for name, field in self.fields.items():
            if field.ragged:
                out[name] = [self._read_rows(name, field, i) for i in indices]
                continue
            row_bytes = math.prod(field.shape) * field.dtype.itemsize
            data = bytearray(len(indices) * row_bytes)
            view = memoryview(data)
            for k in sorted(range(len(indices)), key=indices.__getitem__):  # in file order: fewer, shorter seeks
                i = indices[k]
                shard = i // self.shard_size
                start = self.starts[name][shard] + (i % self.shard_size) * row_bytes
                self._pread_into(self.shards[shard][0], view[k * row_bytes : (k + 1) * row_bytes], start)
            out[name] = torch.frombuffer(data, dtype=field.dtype).reshape(len(indices), *field.shape)
        return out

    def _read_rows(self, name: str, field: Field, index: int) -> torch.Tensor:
        """The rows (n, d) of sample `index` of a ragged field."""
        shard, local = divmod(index, self.shard_size)
        path, header, _, offsets = self.shards[shard]
        begin, end = offsets[name][local].item(), offsets[name][local + 1].item()
        row_shape = tuple(header[name]["shape"][1:])
        row_bytes = math.prod(row_shape) * field.dtype.itemsize
        size = (end - begin) * row_bytes
        rows = self._pread(path, self.starts[name][shard] + begin * row_bytes, size, field.dtype)
        return rows.reshape(end - begin, *row_shape)

    def _pread_into(self, path: str, view: memoryview, start: int) -> None:
        if path not in self._files:  # opened lazily, so that each DataLoader worker opens its own
            self._files[path] = descriptor = os.open(path, os.O_RDONLY)
            if self._checked and hasattr(os, "posix_fadvise"):  # samples are read at random: no read-ahead
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        done = 0
        while done < len(view):
            got = os.preadv(self._files[path], [view[done:]], start + done)
            if got == 0:
                raise EOFError(f"{path} ends before byte {start + len(view)}: the file changed since it was checked.")
            done += got

    def _read_whole(self, path: str, info: dict, data_start: int) -> torch.Tensor:
        """A whole tensor of a shard, from its header entry."""
        begin, end = info["data_offsets"]
        return self._pread(path, data_start + begin, end - begin, _DTYPES[info["dtype"]]).reshape(info["shape"])

    def _pread(self, path: str, start: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        data = bytearray(size)
        self._pread_into(path, memoryview(data), start)
        return torch.frombuffer(data, dtype=dtype) if size else torch.empty(0, dtype=dtype)

    def _check_finite(self, chunk_bytes: int = 16 << 20) -> None:
        for path, header, data_start, _ in self.shards:
            for name, info in header.items():
                dtype = _DTYPES[info["dtype"]]
                if name == "__metadata__" or not dtype.is_floating_point:
                    continue
                begin, end = info["data_offsets"]
                step = chunk_bytes - chunk_bytes % dtype.itemsize
                for start in range(begin, end, step):
                    values = self._pread(path, data_start + start, min(step, end - start), dtype)
                    if not torch.isfinite(values).all():
                        raise ValueError(f"The cache shard {path} holds non-finite {name!r} values.")
        for descriptor in self._files.values():
            os.close(descriptor)
        self._files = {}

    def __getstate__(self):  # DataLoader workers open their own files
        return {**self.__dict__, "_files": {}}


def _as_stored(tensors: Dict[str, object], fields: Dict[str, Field], count: int) -> Dict[str, torch.Tensor]:
    """What `compute` returned, checked against the fields (shapes, dtypes, finite values) and laid out flat."""
    stored = {}
    for name, field in fields.items():
        value = tensors[name]
        if field.ragged:
            rows = [torch.as_tensor(r) for r in value]
            if len(rows) != count or any(tuple(r.shape[1:]) != tuple(field.shape[1:]) for r in rows):
                raise ValueError(
                    f"compute gave {name!r} rows {[tuple(r.shape) for r in rows[:3]]}..., not {count} "
                    f"of shape {field.shape}."
                )
            lengths = torch.tensor([0] + [len(r) for r in rows])
            stored[f"{name}.offsets"] = lengths.cumsum(0)
            value = torch.cat(rows) if rows else torch.empty(0, *field.shape[1:])
        elif tuple(value.shape) != (count, *field.shape):
            raise ValueError(f"compute gave {name!r} of shape {tuple(value.shape)}, not {(count, *field.shape)}.")
        value = value.detach().to("cpu", field.dtype).contiguous()
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"Non-finite {name!r} values computed for the cache; nothing was written for them.")
        stored[name] = value
    return stored


def _shard_problem(path: str, fields: Dict[str, Field], count: int) -> Optional[str]:
    """Why the shard at `path` does not hold `count` samples of `fields` (None when it does)."""
    try:
        header, data_start = _read_header(path)
        end = max((info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"), default=0)
        if os.path.getsize(path) != data_start + end:
            return "truncated"
        for name, field in fields.items():
            info = header[name]
            if info["dtype"] != _NAMES[field.dtype]:
                return f"{name!r} is {info['dtype']}, not {_NAMES[field.dtype]}"
            if field.ragged:
                if header[f"{name}.offsets"]["shape"] != [count + 1] or info["shape"][1:] != list(field.shape[1:]):
                    return f"{name!r} does not hold {count} rows of shape {field.shape}"
            elif info["shape"] != [count, *field.shape]:
                return f"{name!r} has shape {info['shape']}, not {[count, *field.shape]}"
    except (OSError, ValueError, KeyError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _read_header(path: str) -> Tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts: the format is an
    8-byte little-endian header length, the JSON header, then the tensors' bytes."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return header, 8 + length


def _shard_path(folder: str, shard: int) -> str:
    return os.path.join(folder, f"shard-{shard:05d}.safetensors")


def _read_manifest(folder: str) -> Optional[dict]:
    return read_json(os.path.join(folder, "manifest.json"))


def _difference(found: dict, wanted: dict) -> str:
    """The entries of two manifests (or keys) that differ, for error messages."""
    found, wanted = found.get("key", found), wanted.get("key", wanted)
    keys = sorted(set(found) | set(wanted))
    return "; ".join(
        f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} asked for" for k in keys if found.get(k) != wanted.get(k)
    )


def module_fingerprint(module: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """An identity of a module's weights for cache keys: a hash of its class, config and, for every tensor of its
    state dict, the name, shape, dtype and `samples_per_tensor` evenly spaced values. A retrained or different VAE
    or text encoder changes it; computing it reads a few thousand values a tensor, not gigabytes."""
    digest = hashlib.sha1(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        config = dict(config) if not hasattr(config, "to_dict") else config.to_dict()
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        picked = flat[:: max(1, flat.numel() // samples_per_tensor)].to("cpu", torch.float64)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:16]
