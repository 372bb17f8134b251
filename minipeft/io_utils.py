"""Crash-safe file writes: one file (temp file + rename), several files as a unit, stale temps removed.

`os.replace` is atomic on POSIX and Windows when both paths are on one filesystem (hence the temp
file in the same directory), so a reader sees either the old file or the complete new one, never a
half-written file, even if the writer is killed. A killed writer does leave its hidden temp file
behind; the next write of the same path removes it (see `remove_stale_temps`), and so do the
checkpoint and adapter readers.

Several files that must match (an adapter's config and weights) cannot be renamed in one step, so
`write_files_as_unit` stages them all, then commits with one atomic write of a small marker file,
then renames them into place; `recover_files` (called by the next write and by the readers) finishes
a committed write that was cut short, or drops an uncommitted one: the folder always ends up holding
one whole save, never the config of one save beside the weights of another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

# which machine wrote a temp file: a pid only means something on the machine that issued it
HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
COMMIT_MARKER = ".minipeft_commit.json"


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh hidden temp file name beside `path`: `.<name>.<host>.<pid>.<random>.tmp`."""
    p = Path(path)
    return p.with_name(f".{p.name}.{HOST_ID}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows: keep the temp there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # exists, owned by someone else
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed writers of `path` left beside it; returns what was removed.

    A temp is stale when it was written on this machine by a process that no longer runs (a temp of
    a writer still at work, or of another machine sharing the folder, is left alone). Temps named by
    older versions (`.<name>.<pid>.<random>.tmp`, no host) count as this machine's.
    """
    p = Path(path)
    pattern = re.compile(re.escape(f".{p.name}.") + r"(?:([0-9a-f]{8})\.)?(\d+)\.[0-9a-f]{8}\.tmp")
    removed = []
    try:
        names = os.listdir(p.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or (m.group(1) not in (None, HOST_ID)) or _pid_alive(int(m.group(2))):
            continue
        try:
            (p.parent / name).unlink()
            removed.append(p.parent / name)
        except FileNotFoundError:
            pass
    return removed


CHECKSUM_KEY = "tensors_sha256"  # where a weights file keeps tensors_sha256 of its tensors, in its safetensors metadata


class ChecksumMismatch(ValueError):
    """A safetensors file whose tensors no longer match the checksum stored with them."""


def read_checked_tensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, the tensors checked against CHECKSUM_KEY when the metadata has it.

    An unreadable file raises safetensors' own error (callers name the file and the fix); a damaged one raises
    ChecksumMismatch. A file without the key (another tool, an older minipeft) is returned unchecked.
    """
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    want = metadata.get(CHECKSUM_KEY)
    if want is not None and tensors_sha256(tensors) != want:
        raise ChecksumMismatch(f"{path}: the tensor data does not match the checksum stored with it ({CHECKSUM_KEY}); "
                               "the file was damaged after it was written")
    return tensors, metadata


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of `tensors` and `metadata`, the same bytes for the same content.

    safetensors writes the metadata's keys in a random order (a hash map), so two saves of one adapter would
    differ; here the header is rewritten with the metadata sorted by key (the tensors keep safetensors' order and
    offsets, the data is untouched), so files can be compared by hash. Layout: an 8-byte little-endian header
    length, the JSON header padded with spaces to a multiple of 8, then the data.
    """
    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def tensors_sha256(tensors: dict) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of NumPy arrays, in name order: a file's checksum."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (the renames in it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(tmp: Path, write_fn: Callable[[str], None]) -> None:
    write_fn(str(tmp))
    if not tmp.exists():
        raise RuntimeError(f"atomic_write: the writer did not create {tmp} (it must write to the path it is given)")
    with open(tmp, "rb+") as f:  # flush to disk before the rename, so a crash cannot leave an empty file
        os.fsync(f.fileno())


def json_safe(value):
    """`value` with every float that is not finite (NaN, inf) replaced by None, so it is written as JSON's null: JSON
    has no NaN, and Python's `NaN` in a file makes it unreadable to other JSON readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest existing ancestor of `path` if it is a file (so no folder can be made there), else None."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_folder_path(path: str | os.PathLike, what: str) -> None:
    """Raise NotADirectoryError naming `what` if a file stands where `path`'s folders would have to be made."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(f"{what}: cannot write {path}: {blocker} is a file, not a folder; pass a path whose "
                                 "folders are folders (or move that file)")


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Call write_fn(temp_path) to write the file, then move it onto `path` in one step.

    The parent directory is created if needed, and temps that killed writers of `path` left are
    removed first. If write_fn raises (or is interrupted), the temp file is removed, the exception
    propagates, and a previous file at `path` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; pass a file path")
    check_folder_path(path, "atomic_write")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path_for(path)
    try:
        _write_synced(tmp, write_fn)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
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


def write_files_as_unit(directory: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Replace the files {name: bytes} in `directory` together: a crash leaves all old or all new.

    1. stage: each file is written and synced under its temp name;  2. commit: the marker
    `.minipeft_commit.json`, naming the staged files, is written atomically (its rename is the one
    moment the save happens);  3. apply: each staged file is renamed onto its name;  4. the marker is
    removed. A crash before 2 leaves the old files (the staged temps are dropped later); a crash after
    2 is finished by `recover_files`, which every later write and read of the folder calls first.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    recover_files(d, files)
    staged = {}
    try:
        for name, data in files.items():
            staged[name] = temp_path_for(d / name)
            _write_synced(staged[name], lambda tmp, data=data: Path(tmp).write_bytes(data))
        marker = {"staged": {name: tmp.name for name, tmp in staged.items()}}
        atomic_write_bytes(d / COMMIT_MARKER, json.dumps(marker).encode())
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    _apply(d)


def _apply(d: Path) -> bool:
    """Rename the committed staged files into place and drop the marker; False if there was no marker."""
    marker = d / COMMIT_MARKER
    try:
        staged = dict(json.loads(marker.read_text())["staged"])
    except FileNotFoundError:
        return False  # none, or another process finished this commit between our check and our read
    except (ValueError, KeyError, TypeError) as e:   # only a hand edit can do this: the marker is written atomically
        raise OSError(f"{marker} is not a commit marker minipeft wrote ({e}); delete it and save again") from None
    for name, tmp in staged.items():
        try:
            os.replace(d / tmp, d / name)
        except FileNotFoundError:
            pass  # already renamed (by the writer before it died, or by a reader finishing the same commit)
    fsync_dir(d)
    marker.unlink(missing_ok=True)
    fsync_dir(d)
    return True


_TEMP = re.compile(r"\.(.+?)\.(?:[0-9a-f]{8}\.)?\d+\.[0-9a-f]{8}\.tmp")


def staged_names(directory: str | os.PathLike) -> set[str]:
    """The file names that temp files in `directory` were staging (see temp_path_for), whatever the files are."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return set()
    return {m.group(1) for m in map(_TEMP.fullmatch, entries) if m is not None}


def recover_files(directory: str | os.PathLike, names: Iterable[str]) -> str | None:
    """Finish or drop a write_files_as_unit that was cut short; returns 'finished', 'dropped' or None.

    A commit marker means the save had happened: its staged files are renamed into place. Without
    one, staged temps of writers that no longer run are deleted and the files stay as they were.
    """
    d = Path(directory)
    done = "finished" if _apply(d) else None
    removed = [p for name in (*names, COMMIT_MARKER) for p in remove_stale_temps(d / name)]
    return done or ("dropped" if removed else None)
