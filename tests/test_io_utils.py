"""io_utils: atomic writes, stale temp files removed, several files replaced as a unit, tensor checksums.

Each window a crash can hit is simulated here by an exception at that point; tests/test_crash_safety.py
does it for real with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from minipeft import io_utils
from minipeft.io_utils import (
    COMMIT_MARKER,
    HOST_ID,
    atomic_write,
    atomic_write_bytes,
    recover_files,
    remove_stale_temps,
    tensors_sha256,
    write_files_as_unit,
)

FILES = ("a.bin", "b.json")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_bytes_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["b.txt"]


def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def half(tmp):
        with open(tmp, "wb") as f:
            f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


@pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked with kill(pid, 0)")
def test_only_temps_of_writers_that_no_longer_run_on_this_machine_are_removed(tmp_path):
    target, dead = tmp_path / "model.safetensors", dead_pid()
    stale = [f".model.safetensors.{HOST_ID}.{dead}.0123abcd.tmp", f".model.safetensors.{dead}.89abcdef.tmp"]
    kept = [f".model.safetensors.{HOST_ID}.{os.getpid()}.0123abcd.tmp",   # a writer at work (this process)
            f".model.safetensors.ffffffff.{dead}.0123abcd.tmp",           # another machine's writer
            f".other.safetensors.{HOST_ID}.{dead}.0123abcd.tmp", "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 10)
    atomic_write_bytes(target, b"new")                                      # the next save cleans up
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, target.name])
    assert remove_stale_temps(target) == []


def test_write_files_as_unit_writes_exactly_the_files(tmp_path):
    write_files_as_unit(tmp_path / "d", {"a.bin": b"1", "b.json": b"{}"})
    write_files_as_unit(tmp_path / "d", {"a.bin": b"22", "b.json": b"[]"})
    assert sorted(os.listdir(tmp_path / "d")) == list(FILES)
    assert (tmp_path / "d" / "a.bin").read_bytes() == b"22" and (tmp_path / "d" / "b.json").read_bytes() == b"[]"


def _first_save(tmp_path):
    d = tmp_path / "d"
    write_files_as_unit(d, {"a.bin": b"old-a", "b.json": b"old-b"})
    return d


def _contents(d):
    return tuple((d / n).read_bytes() for n in FILES)


def test_a_crash_before_the_commit_leaves_the_old_files(tmp_path, monkeypatch):
    d = _first_save(tmp_path)

    def crash_at_commit(path, data):
        raise KeyboardInterrupt  # like a kill: both new files are staged, the marker never written

    monkeypatch.setattr(io_utils, "atomic_write_bytes", crash_at_commit)
    with pytest.raises(KeyboardInterrupt):
        write_files_as_unit(d, {"a.bin": b"new-a", "b.json": b"new-b"})
    assert _contents(d) == (b"old-a", b"old-b") and sorted(os.listdir(d)) == list(FILES)


@pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked with kill(pid, 0)")
def test_staged_files_of_a_killed_uncommitted_save_are_dropped(tmp_path):
    d = _first_save(tmp_path)
    (d / f".a.bin.{HOST_ID}.{dead_pid()}.0123abcd.tmp").write_bytes(b"new-a")   # staged, never committed
    assert recover_files(d, FILES) == "dropped"
    assert _contents(d) == (b"old-a", b"old-b") and sorted(os.listdir(d)) == list(FILES)
    assert recover_files(d, FILES) is None


def test_a_crash_between_the_renames_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    d = _first_save(tmp_path)
    real_replace, renamed = os.replace, []

    def crash_after_one_rename(src, dst):
        if str(dst).endswith(FILES):
            if renamed:
                raise KeyboardInterrupt   # committed, a.bin renamed, b.json not yet
            renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", crash_after_one_rename)
    with pytest.raises(KeyboardInterrupt):
        write_files_as_unit(d, {"a.bin": b"new-a", "b.json": b"new-b"})
    monkeypatch.undo()
    assert _contents(d) == (b"new-a", b"old-b") and COMMIT_MARKER in os.listdir(d)   # the torn state, marked
    assert recover_files(d, FILES) == "finished"
    assert _contents(d) == (b"new-a", b"new-b") and sorted(os.listdir(d)) == list(FILES)


def test_the_commit_marker_names_the_staged_files(tmp_path, monkeypatch):
    d, seen = _first_save(tmp_path), {}
    monkeypatch.setattr(io_utils, "_apply", lambda d_: (d_ / COMMIT_MARKER).exists()
                        and seen.update(json.loads((d_ / COMMIT_MARKER).read_text())))
    write_files_as_unit(d, {"a.bin": b"new-a", "b.json": b"new-b"})
    assert sorted(seen["staged"]) == list(FILES)
    assert all((d / tmp).read_bytes() == b"new-" + name[0].encode() for name, tmp in seen["staged"].items())


def test_tensors_sha256_changes_with_any_byte_name_dtype_or_shape():
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    h = tensors_sha256(a)
    assert h == tensors_sha256(dict(reversed(a.items())))                  # the order of the dict does not count
    flipped = a["w"].copy()
    flipped.reshape(-1).view(np.uint8)[5] ^= 1
    for other in ({**a, "w": flipped}, {"v": a["w"], "b": a["b"]}, {**a, "w": a["w"].astype(np.float64)},
                  {**a, "w": a["w"].reshape(3, 2)}):
        assert tensors_sha256(other) != h


def test_a_marker_minipeft_did_not_write_is_named(tmp_path):
    d = _first_save(tmp_path)
    (d / COMMIT_MARKER).write_text("[1, 2]")
    with pytest.raises(OSError, match=re.escape(f"{d / COMMIT_MARKER} is not a commit marker minipeft wrote")):
        recover_files(d, FILES)
