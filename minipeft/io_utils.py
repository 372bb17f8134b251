"""Atomic file writes: write a temp file beside the target, then rename it over the target.

`os.replace` is atomic on POSIX and Windows when both paths are on one filesystem (hence the
temp file in the same directory), so a reader sees either the old file or the complete new
one, never a half-written file, even if the writer crashes or is interrupted.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh hidden temp file name in the same directory as `path`."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Call write_fn(temp_path) to write the file, then move it onto `path` in one step.

    The parent directory is created if needed. If write_fn raises (or is interrupted), the temp
    file is removed, the exception propagates, and a previous file at `path` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; pass a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write_fn(str(tmp))
        if not tmp.exists():
            raise RuntimeError(f"atomic_write: the writer did not create {tmp} (it must write to the path it is given)")
        with open(tmp, "rb+") as f:  # flush to disk before the rename, so a crash cannot leave an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_write)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see atomic_write)."""
    return atomic_write_bytes(path, text.encode(encoding))
