"""A CuPy stand-in for minipeft's own tests: NumPy underneath, CuPy's rules on top (MINIPEFT_TEST_DEVICE=strict).

CI has no GPU, so without this the CuPy path would first run on a user's GPU. Under MINIPEFT_TEST_DEVICE=strict,
tests/conftest.py registers it (`backend.register_device("strict", strict_cupy)`) and selects it: `backend.xp()`
is this package and `backend.is_gpu()` is True, so every GPU branch of the library runs; each
array is an `ndarray` that holds a NumPy array and refuses what a cupy.ndarray refuses. Nothing imports this
package unless that variable is set; it is not part of minipeft.

As CuPy does:
- `np.asarray(a)`, `np.array(a)` and anything else that calls `a.__array__` raise CuPy's TypeError; only
  `a.get()`, `xp.asnumpy(a)` and `backend.to_numpy(a)` copy to the host.
- `xp.asarray` / `xp.array` copy host data (NumPy arrays, lists, scalars) to the device; indexing with a NumPy
  array or a list uploads the index. A NumPy array where a device array belongs (`a + host`,
  `xp.add(a, host)`, `host + a`, `host[i] = a`, `a[i] = host`) raises; Python and NumPy scalars are fine.
- reductions and integer indexing give 0-d device arrays, not NumPy scalars.
- `xp.random.default_rng(seed)` draws device arrays with cupy.random.Generator's methods and signatures
  (random, standard_normal, uniform, integers; each takes dtype=).
- what minipeft calls on the GPU path is mirrored: `cupyx.scatter_add`, `cuda.Device().synchronize()`,
  `cuda.runtime.getDeviceProperties`, `get_default_memory_pool()` (it tracks the bytes of live arrays).
Stricter than CuPy: CuPy implements NEP 13/18, so `np.exp(a)` or `np.mean(a)` dispatch to CuPy for what it
implements; here every NumPy function or ufunc given a device array raises, so library code says
`xp().exp(a)`, the one spelling that works on both backends.
Looser (not modelled): kernels run synchronously in NumPy's numerics (draws equal NumPy's for a seed); any
NumPy function name is available, even one CuPy lacks (but no ufunc `.at`: the GPU path uses cupyx.scatter_add);
lists of scalars are accepted everywhere; an out-of-bounds index raises as in NumPy (CuPy wraps it around).

Counted, inside `with counting() as c:` (each is a host round trip on a GPU):
- `c.scalar_reads`: float(a), int(a), bool(a), a.item(), format(a), and the syncs CuPy makes to learn a
  data-dependent size: boolean-mask indexing, nonzero, flatnonzero, argwhere, unique;
- `c.to_host`: arrays copied to the host (get, asnumpy, tolist, tobytes, repr); `c.to_device`: host data in.
`c.sites` names the caller of each, e.g. "scalar_read at minipeft/train.py:150 (train)".
"""

from __future__ import annotations

import threading
import types

import numpy as np

from strict_cupy._array import _call, _index, _raw, ndarray
from strict_cupy._ledger import MemoryPool, Syncs, _count, counting, get_default_memory_pool

__all__ = ["MemoryPool", "Syncs", "counting", "get_default_memory_pool", "ndarray"]


# ---- the module namespace: cupy's names, NumPy's functions behind them ------------------------------------------
def asarray(a, dtype=None, order=None):
    """Host data -> a device array (copied, counted); a device array passes through (cast if dtype differs)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else ndarray(a._a.astype(dtype))
    if isinstance(a, (list, tuple)) and any(isinstance(v, ndarray) for v in a):
        return ndarray(np.asarray(_raw(a), dtype=dtype))  # a list of device arrays is stacked on the device
    _count("to_device")
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    return ndarray(np.array(asarray(a)._a, dtype=dtype, copy=False, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    return ndarray(np.ascontiguousarray(asarray(a)._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a, order=order)


def _function(fn, name: str):
    return lambda *args, **kwargs: _call(fn, name, args, kwargs)


class _Ufunc:
    """A NumPy ufunc taking device arrays: call, reduce, accumulate, outer (no `.at`: use cupyx.scatter_add)."""

    def __init__(self, uf: np.ufunc):
        self._uf, self.__name__ = uf, uf.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._uf, self.__name__, args, kwargs)

    def __getattr__(self, name):
        if name not in ("reduce", "accumulate", "outer"):
            raise AttributeError(f"the strict backend's ufunc {self.__name__} has no .{name}")
        return lambda *a, **k: _call(getattr(self._uf, name), name, a, k)


class _Generator:
    """cupy.random.Generator: random, standard_normal, uniform, integers, each with a dtype, drawing on the device."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)
        self.lock = threading.Lock()     # as CuPy's bit generator holds one: like it, this cannot be deep-copied

    def random(self, size=None, dtype=np.float64, out=None):
        return self._put(self._g.random(size, dtype=dtype), out)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._put(self._g.standard_normal(size, dtype=dtype), out)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return ndarray(np.asarray(self._g.uniform(low, high, size)).astype(dtype, copy=False))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return ndarray(np.asarray(self._g.integers(low, high, size, dtype=dtype, endpoint=endpoint)))

    @staticmethod
    def _put(r, out):
        if out is None:
            return ndarray(np.asarray(r))
        out._a[...] = r
        return out


random = types.SimpleNamespace(default_rng=lambda seed=None: _Generator(seed), Generator=_Generator)
cupyx = types.SimpleNamespace(scatter_add=lambda a, slices, value: np.add.at(a._a, _index(slices), _raw(value)))
_props = {"name": b"minipeft strict stand-in (NumPy on the CPU)", "totalGlobalMem": 0}
cuda = types.SimpleNamespace(
    Device=lambda device=None: types.SimpleNamespace(id=0, synchronize=lambda: None),
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: dict(_props)))
linalg = types.SimpleNamespace(**{n: _function(getattr(np.linalg, n), n)
                                  for n in ("norm", "inv", "solve", "qr", "svd", "eigh", "det", "cholesky")})
_PASS = (np.finfo, np.iinfo, np.dtype)


def __getattr__(name: str):
    """NumPy's function or constant of that name, taking and giving device arrays (cached after first use)."""
    obj = getattr(np, name)  # AttributeError as NumPy's
    if isinstance(obj, np.ufunc):
        wrapped = _Ufunc(obj)
    elif isinstance(obj, type) and (issubclass(obj, np.generic) or obj in _PASS):
        wrapped = obj                                       # dtypes and their info are shared with NumPy, as in CuPy
    elif callable(obj) and not isinstance(obj, type):
        wrapped = _function(obj, name)
    elif isinstance(obj, (int, float, type(None))):
        wrapped = obj                                       # pi, inf, nan, newaxis
    else:
        raise AttributeError(f"the strict backend does not provide numpy.{name} ({type(obj).__name__})")
    globals()[name] = wrapped
    return wrapped
