"""The one place that picks the array library: NumPy on the CPU (default), CuPy on a GPU.

Every other module asks `xp()` for the array module instead of importing numpy or cupy
conditionally. Select the GPU with `MINIPEFT_DEVICE=cuda` or `minipeft.set_device("cuda")`.
`register_device(name, module)` adds another array library with CuPy's API under a name: the test suite
registers its CuPy stand-in that way (tests/strict_cupy/).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

_DEVICES = ("cpu", "cuda")
_REGISTERED: dict[str, Any] = {}   # name -> an array module with CuPy's API (register_device)
_state: dict[str, Any] = {"device": "cpu", "xp": np, "rng": None, "dtype": np.float32}


class DeviceError(RuntimeError):
    """Raised when the requested device cannot be used."""


def _load_cupy():
    try:
        import cupy  # noqa: PLC0415
    except ImportError as e:
        raise DeviceError(
            "MINIPEFT_DEVICE=cuda needs CuPy, which is not installed. Install it with "
            "`pip install -e \".[gpu]\"` (cupy-cuda12x; pick cupy-cuda11x for CUDA 11), "
            "or unset MINIPEFT_DEVICE / call minipeft.set_device('cpu') to use NumPy."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1).sum().item()  # the first real op is where a missing driver shows up
    except Exception as e:  # CUDARuntimeError, or a driver/library load failure
        raise DeviceError(
            f"CuPy is installed but no CUDA GPU answered ({type(e).__name__}: {e}). "
            "Check `nvidia-smi`, or unset MINIPEFT_DEVICE / call minipeft.set_device('cpu')."
        ) from e
    if n < 1:
        raise DeviceError("CuPy found no CUDA device; use minipeft.set_device('cpu').")
    return cupy


def register_device(name: str, module) -> None:
    """Make `set_device(name)` select `module`: an array library with CuPy's API, its `cupyx` attribute standing
    in for cupyx (the test suite's CuPy stand-in is one)."""
    if name in _DEVICES:
        raise ValueError(f"register_device: {name!r} is a built-in device; pick another name")
    _REGISTERED[name] = module


def set_device(device: str) -> None:
    """Select 'cpu' (NumPy) or 'cuda' (CuPy) for every array created from now on."""
    if device not in _DEVICES and device not in _REGISTERED:
        raise ValueError(f"device must be one of {_DEVICES + tuple(_REGISTERED)}, got {device!r}")
    _state["xp"] = np if device == "cpu" else _REGISTERED[device] if device in _REGISTERED else _load_cupy()
    _state["device"] = device
    _state["rng"] = None


def get_device() -> str:
    """The current device name: 'cpu', 'cuda', or a name given to register_device."""
    return _state["device"]


def device_name() -> str:
    """The machine the arrays live on, for benchmark records: the GPU's name, or the CPU's model and core count.

    The CPU model comes from /proc/cpuinfo (Linux), else `platform.processor()`, else the architecture.
    """
    if is_gpu():
        props = _state["xp"].cuda.runtime.getDeviceProperties(_state["xp"].cuda.Device().id)
        name = props["name"]
        return f"GPU {name.decode() if isinstance(name, bytes) else name}"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"CPU {model}, {os.cpu_count()} cores"


def xp():
    """The active array module (numpy or cupy)."""
    return _state["xp"]


def is_gpu() -> bool:
    """True when arrays live on a device: cuda, or a registered library that takes the same code path."""
    return _state["device"] != "cpu"


def synchronize() -> None:
    """Wait until the GPU has finished every kernel queued so far; a no-op on the CPU (torch.cuda.synchronize).

    GPU work is asynchronous: a call returns once its kernels are queued, so a timer read straight after it
    measures the launch, not the work. Benchmarks call this on both sides of what they time.
    """
    if is_gpu():
        _state["xp"].cuda.Device().synchronize()


def cupyx():
    """The cupyx module (scatter_add and friends) on the GPU path: CuPy's, or a registered library's mirror."""
    if _state["device"] in _REGISTERED:
        return _state["xp"].cupyx
    import cupyx as module  # noqa: PLC0415 (installed with cupy)

    return module


def to_numpy(a) -> np.ndarray:
    """Copy an array of the active backend (or anything array-like) to a NumPy array."""
    if hasattr(a, "data") and hasattr(a, "requires_grad"):  # a Tensor
        a = a.data
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)


def asarray(a, dtype=None):
    """Move array-like `a` onto the active backend (no copy when already there)."""
    return xp().asarray(a, dtype=dtype)


def get_default_dtype():
    """float32 unless changed with set_default_dtype (float64 is used for gradient checks)."""
    return _state["dtype"]


def set_default_dtype(dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _state["dtype"] = dtype.type


def manual_seed(seed: int) -> None:
    """Seed the one generator used for initialisation and dropout; CPU runs become bit-reproducible."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _state["rng"] = xp().random.default_rng(int(seed)) if is_gpu() else np.random.default_rng(int(seed))


def rng():
    """The generator seeded by manual_seed (seeded with 0 on first use)."""
    if _state["rng"] is None:
        manual_seed(0)
    return _state["rng"]


@contextlib.contextmanager
def fork_rng() -> Iterator[None]:
    """Inside the block manual_seed and draws use their own generator; afterwards the old one is back.

    Like torch.random.fork_rng: the block draws from a copy of the current generator (or from its own seed, after
    manual_seed), so after the block the outer stream is exactly where it was, as if the block had not run.
    """
    prev = _state["rng"]
    try:   # numpy's Generator (and a registered stand-in's) copies with its state
        _state["rng"] = None if prev is None else copy.deepcopy(prev)
    except TypeError:
        # CuPy's generator may not copy (its bit generator holds a lock and curand states on the device): then the
        # block draws from the outer stream itself, as before this copy was made. Every caller in minipeft seeds
        # inside the block, so only a draw before manual_seed would move the outer stream.
        _state["rng"] = prev
    try:
        yield
    finally:
        _state["rng"] = prev


def tune_allocator() -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS; True if it took effect.

    A training step allocates and frees many arrays of a few MB; by default glibc serves each with a fresh
    mmap and unmaps it on free, so every new temporary page-faults its pages back in (figures in
    BENCHMARKS.md, "Fast paths"). This changes the whole process's allocator, so it is never done at import:
    the tutorials and benchmarks call it, and a user's script may. No effect off glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def _device_from_environment() -> None:
    value = os.environ.get("MINIPEFT_DEVICE", "")
    device = value.strip().lower()
    if device in ("", "cpu"):
        return
    if device not in _DEVICES:
        raise ValueError(f"MINIPEFT_DEVICE={value!r} is not a device minipeft knows; allowed values: 'cpu' (NumPy, "
                         "the default) and 'cuda' (CuPy on an NVIDIA GPU). Unset it to run on the CPU.")
    set_device(device)


_device_from_environment()
