"""Measure memory honestly: peak bytes of a block of code, and the bytes parameters and optimizer state hold.

What `PeakMemory` measures:
- CPU (NumPy): the high-water mark, above the level at entry, of memory traced by `tracemalloc`.
  NumPy reports every array buffer it allocates to tracemalloc, so this counts activations,
  gradients, optimizer state and temporaries created inside the block, plus Python objects.
  Arrays that already existed at entry (the model's weights) are not counted; add
  `param_bytes(model)` for the total. Tracing slows allocation-heavy code a little.
- GPU (CuPy): the growth of CuPy's default memory pool (`total_bytes()`) over the block. The
  pool is emptied of free blocks at entry and only grows while the block runs, so its size at
  exit is its high-water mark: the device memory the block needed, rounded up to CuPy's
  block sizes. `sample()` also polls the bytes in use, for code that frees the pool itself.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from minipeft import backend


class PeakMemory:
    """Context manager: `with PeakMemory() as pm: ...` then `pm.peak_bytes` (see the module docstring)."""

    def __init__(self):
        self.peak_bytes = 0
        self._gpu = False
        self._started_tracing = False
        self._base = 0
        self._pool = None

    def __enter__(self) -> PeakMemory:
        self._gpu = backend.is_gpu()
        if self._gpu:
            cupy = backend.xp()  # CuPy, or the strict stand-in that mirrors its memory pool

            self._pool = cupy.get_default_memory_pool()
            cupy.cuda.Device().synchronize()
            self._pool.free_all_blocks()  # so the pool's size tracks what the block needs
            self._base = self._pool.used_bytes()
            self._base_total = self._pool.total_bytes()
        else:
            self._started_tracing = not tracemalloc.is_tracing()
            if self._started_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def sample(self) -> int:
        """Poll the current usage, update and return peak_bytes (cheap; call it inside loops if you like)."""
        if self._gpu:
            now = max(self._pool.used_bytes() - self._base, self._pool.total_bytes() - self._base_total)
        else:
            now = tracemalloc.get_traced_memory()[1] - self._base
        self.peak_bytes = max(self.peak_bytes, int(now))
        return self.peak_bytes

    def __exit__(self, *exc) -> None:
        if self._gpu:
            cupy = backend.xp()
            cupy.cuda.Device().synchronize()
        self.sample()
        if self._started_tracing:
            tracemalloc.stop()


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn() and return (its result, the peak bytes it allocated beyond what was live before)."""
    with PeakMemory() as pm:
        result = fn()
    return result, pm.peak_bytes


def param_bytes(model, trainable_only: bool = False) -> int:
    """Bytes held by the model's (trainable) parameters; a tied weight counts once."""
    return sum(int(p.data.nbytes) for p in model.parameters(trainable_only=trainable_only))


def grad_bytes(model) -> int:
    """Bytes held by the gradients currently stored on the model's parameters."""
    return sum(int(p.grad.nbytes) for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(opt) -> int:
    """Bytes of the optimizer's per-parameter state arrays (Adam's m and v, SGD momentum), not scratch."""
    return sum(int(v.nbytes) for st in opt.state.values() for v in st.values() if hasattr(v, "nbytes"))


def format_bytes(n: int) -> str:
    """Human-readable size: 1536 -> '1.5 KiB'."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"
