"""What moved between host and device: counted reads and transfers, and the live device bytes (CuPy's pool)."""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from minipeft import backend


@dataclass
class Syncs:
    """What the code inside `counting()` moved between host and device."""

    scalar_reads: int = 0                                   # float/int/bool/item, data-dependent sizes
    to_host: int = 0                                        # arrays copied device -> host
    to_device: int = 0                                      # host data copied host -> device
    sites: list[str] = field(default_factory=list)          # "<kind> at <file>:<line> (<function>)", in order


_active: list[Syncs] = []
_PACKAGE = os.path.dirname(os.path.abspath(__file__))                  # strict_cupy
_BACKEND = os.path.abspath(backend.__file__)                         # minipeft/backend.py: not a caller
_ROOT = os.path.dirname(os.path.dirname(_PACKAGE))                     # sites are named relative to this


@contextlib.contextmanager
def counting() -> Iterator[Syncs]:
    """Count the scalar reads and transfers made inside the block."""
    c = Syncs()
    _active.append(c)
    try:
        yield c
    finally:
        _active.remove(c)


def _count(kind: str) -> None:
    if not _active:
        return
    f = sys._getframe(1)
    while f is not None and (os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _PACKAGE
                             or os.path.abspath(f.f_code.co_filename) == _BACKEND):
        f = f.f_back
    site = "?" if f is None else f"{os.path.relpath(f.f_code.co_filename, _ROOT)}:{f.f_lineno} ({f.f_code.co_name})"
    attr = "scalar_reads" if kind == "scalar_read" else kind
    for c in _active:
        setattr(c, attr, getattr(c, attr) + 1)
        c.sites.append(f"{kind} at {site}")


# ---- device memory: the bytes of live device buffers, as CuPy's pool sees them ----------------------------------
_mem = {"used": 0, "high": 0}
_owners: dict[int, tuple[int, weakref.ref]] = {}


def _track(a: np.ndarray) -> None:
    while isinstance(a.base, np.ndarray):
        a = a.base
    k = id(a)
    if k not in _owners:
        _owners[k] = (a.nbytes, weakref.ref(a, lambda _, k=k: _release(k)))
        _mem["used"] += a.nbytes
        _mem["high"] = max(_mem["high"], _mem["used"])


def _release(k: int) -> None:
    n, _ = _owners.pop(k, (0, None))
    _mem["used"] -= n


class MemoryPool:
    """cupy.cuda.MemoryPool's reading side: used_bytes, total_bytes (high-water since free_all_blocks)."""

    def used_bytes(self) -> int:
        return _mem["used"]

    def total_bytes(self) -> int:
        return _mem["high"]

    def free_all_blocks(self) -> None:
        _mem["high"] = _mem["used"]


_pool = MemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _pool
