"""The stand-in's device array: a NumPy array behind CuPy's rules (see the package docstring)."""

from __future__ import annotations

import operator

import numpy as np

from strict_cupy._ledger import _count, _track

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
             "array explicitly.")  # CuPy's words


# ---- moving values between NumPy and the stand-in ----------------------------------------------------------------
def _dev(r):
    """A NumPy result as the device result CuPy gives: arrays and NumPy scalars become device arrays."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, (tuple, list)):
        return type(r)(_dev(x) for x in r)
    return r


def _raw(x):
    """An argument as NumPy sees it; a host NumPy array is refused, as CuPy refuses it."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (a host array where a device array belongs; upload it with "
                        "xp.asarray, or keep the computation on the host)")
    if isinstance(x, (tuple, list)):
        return type(x)(_raw(v) for v in x)
    return x


def _operand(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (int, float, complex, bool, np.generic)):
        return x
    if isinstance(x, np.ndarray):
        return _raw(x)  # raises
    if getattr(x, "__array_priority__", 0) > ndarray.__array_priority__:
        return NotImplemented  # e.g. a Tensor: its reflected operator takes over, as with CuPy
    raise TypeError(f"Unsupported type {type(x)}")


def _index(idx):
    """An index as NumPy takes it; NumPy arrays and lists in it are uploaded first, as CuPy does."""
    if isinstance(idx, tuple):
        return tuple(_index(i) for i in idx)
    if isinstance(idx, ndarray):
        return idx._a
    if isinstance(idx, (np.ndarray, list)):
        _count("to_device")
        return np.array(idx)
    return idx


def _has_mask(idx) -> bool:
    parts = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, np.ndarray) and i.dtype == bool for i in parts)


_SYNCING = {"nonzero", "flatnonzero", "argwhere", "unique"}  # result size depends on the data: CuPy reads it back


def _call(fn, name: str, args, kwargs):
    out = kwargs.get("out")
    r = fn(*_raw(args), **{k: _raw(v) for k, v in kwargs.items()})
    if name in _SYNCING:
        _count("scalar_read")
    if isinstance(out, ndarray) and r is out._a:
        return out
    return _dev(r)


class ndarray:  # noqa: N801 (named as cupy.ndarray, for isinstance checks through xp().ndarray)
    """A device array: a NumPy array that only the stand-in's functions and `.get()` may read."""

    __slots__ = ("_a",)
    __array_priority__ = 100     # CuPy's; an operand with a higher one (a Tensor) gets the reflected operator
    __array_ufunc__ = None       # NumPy ufuncs refuse it, and `host + a` falls through to a.__radd__

    def __init__(self, a: np.ndarray):
        self._a = a
        _track(a)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__}() was given a device array; call backend.xp().{func.__name__} "
                        "(CuPy dispatches only what it implements, and never np.asarray or np.random)")

    # ---- reading values back: each is a device sync ----------------------------------------------------------------
    def get(self, stream=None, out=None) -> np.ndarray:
        _count("to_host")
        return self._a.copy()

    def tolist(self):
        _count("to_host")
        return self._a.tolist()

    def tobytes(self, order="C") -> bytes:
        _count("to_host")
        return self._a.tobytes(order)

    def item(self):
        _count("scalar_read")
        return self._a.item()

    def __float__(self):
        _count("scalar_read")
        return float(self._a)

    def __int__(self):
        _count("scalar_read")
        return int(self._a)

    def __bool__(self):
        _count("scalar_read")
        return bool(self._a)

    def __format__(self, spec):
        _count("scalar_read")
        return format(self._a.item() if self._a.size == 1 else self._a, spec)

    def __repr__(self):
        _count("to_host")
        return repr(self._a)

    __str__ = __repr__

    # ---- array protocol ---------------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __getitem__(self, idx):
        idx = _index(idx)
        if _has_mask(idx):
            _count("scalar_read")
        return _dev(self._a[idx])

    def __setitem__(self, idx, value):
        idx = _index(idx)
        if _has_mask(idx):
            _count("scalar_read")
        if isinstance(value, np.ndarray) and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill (CuPy's words: upload it first)")
        self._a[idx] = _raw(value) if not isinstance(value, np.ndarray) else value

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __copy__(self):
        return ndarray(self._a.copy())


def _binary(op, reflected=False):
    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        return _dev(op(o, self._a) if reflected else op(self._a, o))
    return method


def _inplace(op):
    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        op(self._a, o)
        return self
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(getattr(operator, "i" + _name)))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: ndarray(op(self._a)))(getattr(operator, _name)))
ndarray.__hash__ = None

_METHODS = ("all any argmax argmin argsort astype clip conj copy cumsum diagonal dot fill flatten max mean min "
            "nonzero prod ravel repeat reshape round sort squeeze std sum swapaxes take trace transpose var view")
for _name in _METHODS.split():
    setattr(ndarray, _name, (lambda n: lambda self, *args, **kw: _call(getattr(self._a, n), n, args, kw))(_name))
