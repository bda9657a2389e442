"""Atomic file writes shared by checkpoints, scorer fits and engine caches.

A file is written under a temporary name in its folder and renamed over the target, so a crash
or a reader in another process never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None], *, suffix: str = ".tmp") -> Path:
    """Create ``path`` with ``writer(tmp_path)``, then rename it into place; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp_name))
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """``atomic_write`` of a byte string, flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what reports and cell files hold: numpy values, tuples, sets, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
