"""A small reverse-mode autograd: `Tensor`, the `Function` protocol, and the tape walk.

An op is a `Function` subclass with two static methods:

    forward(ctx, *arrays, **options) -> out_array       # save what backward needs on ctx
    backward(ctx, dout) -> (dinput0, dinput1, ...)      # one entry per positional input

`ctx.needs_input_grad[i]` says whether input i needs a gradient; backward returns None for
the others and spends no compute on them (a frozen weight costs no dW matmul). Applying a
Function records one node on the tape; `Tensor.backward()` walks the nodes in reverse
topological order and accumulates (`+=`) into each leaf's `.grad`, so a tensor used twice
(tied weights) gets the sum of both paths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from minipeft import backend

_grad_enabled = [True]


class no_grad:  # noqa: N801 (lower case, as torch.no_grad)
    """Inside this block ops record nothing on the tape (inference, optimizer updates).

    As torch.no_grad: `with no_grad():`, or a decorator, `@no_grad()` or bare `@no_grad`; the previous
    setting comes back on exit, so blocks nest.
    """

    def __new__(cls, fn: Callable | None = None) -> no_grad | Callable:
        if fn is None:
            return super().__new__(cls)
        return cls()(fn)  # bare @no_grad: decorate fn straight away

    def __init__(self, fn: Callable | None = None) -> None:
        self._prev: list[bool] = []   # a stack: one instance entered twice (nested) restores each level (torch's
        #                               keeps one prev: not here)

    def __enter__(self) -> None:
        self._prev.append(_grad_enabled[0])
        _grad_enabled[0] = False

    def __exit__(self, *exc) -> None:
        _grad_enabled[0] = self._prev.pop()

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled[0]


class Context:
    """What one op application keeps for its backward."""

    __slots__ = ("saved", "needs_input_grad", "options")

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.saved: tuple = ()
        self.needs_input_grad = needs_input_grad
        self.options: dict[str, Any] = {}

    def save_for_backward(self, *values) -> None:
        self.saved = values


class Node:
    """One recorded op application: the function, its context and its input tensors."""

    __slots__ = ("fn", "ctx", "inputs", "freed")

    def __init__(self, fn: type[Function], ctx: Context, inputs: tuple):
        self.fn, self.ctx, self.inputs, self.freed = fn, ctx, inputs, False


class Function:
    """Base class of every op: subclass and write static `forward` and `backward`."""

    @staticmethod
    def forward(ctx: Context, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, dout):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        """Run forward on the inputs' arrays and, if any input needs grad, record a node."""
        tensors = tuple(x if (x is None or isinstance(x, Tensor)) else Tensor(x) for x in inputs)
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        record = _grad_enabled[0] and any(needs)
        ctx = Context(needs if record else (False,) * len(tensors))
        out = cls.forward(ctx, *(None if t is None else t.data for t in tensors), **options)
        result = Tensor(out, requires_grad=record)
        if record:
            result._node = Node(cls, ctx, tensors)
        return result


class Tensor:
    """An array (numpy or cupy) plus the autograd bookkeeping: grad, requires_grad, its node.

    `.size` follows NumPy: an int property (the element count), not torch's `size()` method, which gives the
    shape (use `.shape`); `numel()` is torch's element count.
    """

    __array_priority__ = 1000  # so `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        xp = backend.xp()
        if isinstance(data, Tensor):
            data = data.data
        if dtype is None and not hasattr(data, "dtype"):
            arr = xp.asarray(data)
            if arr.dtype.kind == "f":
                arr = arr.astype(backend.get_default_dtype())
        else:
            arr = xp.asarray(data, dtype=dtype)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got dtype {arr.dtype}")
        self._data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node: Node | None = None

    # ---- array-like properties -------------------------------------------------------------
    @property
    def data(self):
        """The array, always of the active backend: assigning host data (a NumPy array) uploads it."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = backend.asarray(value)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    def numel(self) -> int:
        """The number of elements, as torch's Tensor.numel() (the same as `.size`)."""
        return int(self.data.size)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{g})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when on cuda)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self) -> Tensor:
        """The same data, cut from the tape (no grad flows through it)."""
        return Tensor(self.data, requires_grad=False)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    # ---- the backward walk -----------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf that requires grad.

        `grad` is the upstream gradient; it may be omitted only for a one-element tensor.
        The graph's saved arrays are freed afterwards unless retain_graph=True.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input needed a "
                               "gradient (did you freeze everything, or run under no_grad()?)")
        xp = backend.xp()
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape "
                                   f"{self.shape}; pass grad= of that shape or reduce first (e.g. .sum())")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): grad shape {grad.shape} != tensor shape {self.shape}")
        order = _topological_order(self)
        grads: dict[int, Any] = {id(self): grad}
        for t in order:
            g = grads.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if node is None:  # a leaf: accumulate; copy so no two leaves (or the caller's grad) share one array
                t.grad = g.copy() if t.grad is None else t.grad + g
                continue
            if node.freed:
                raise RuntimeError(f"backward through {node.fn.__name__} a second time: its saved values were "
                                   "freed by the first backward(). Pass retain_graph=True to the first call.")
            in_grads = node.fn.backward(node.ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(node.inputs):
                raise RuntimeError(f"{node.fn.__name__}.backward returned {len(in_grads)} grads for "
                                   f"{len(node.inputs)} inputs")
            for inp, gi in zip(node.inputs, in_grads, strict=True):
                if inp is None or gi is None or not inp.requires_grad:
                    continue
                if gi.shape != inp.data.shape:
                    raise RuntimeError(f"{node.fn.__name__}.backward gave grad of shape {gi.shape} for an "
                                       f"input of shape {inp.shape}")
                prev = grads.get(id(inp))
                grads[id(inp)] = gi if prev is None else prev + gi
            if not retain_graph:
                node.ctx.saved = ()
                node.freed = True

    # ---- operator sugar: the ops live in minipeft.ops, which fills _TENSOR_OPS on import -----------
    def __add__(self, o):
        return _op("add")(self, o)

    def __radd__(self, o):
        return _op("add")(o, self)

    def __sub__(self, o):
        return _op("sub")(self, o)

    def __rsub__(self, o):
        return _op("sub")(o, self)

    def __mul__(self, o):
        return _op("mul")(self, o)

    def __rmul__(self, o):
        return _op("mul")(o, self)

    def __truediv__(self, o):
        return _op("div")(self, o)

    def __rtruediv__(self, o):
        return _op("div")(o, self)

    def __neg__(self):
        return _op("neg")(self)

    def __pow__(self, p):
        return _op("pow")(self, p)

    def __matmul__(self, o):
        return _op("matmul")(self, o)

    def __getitem__(self, idx):
        return _op("getitem")(self, idx)

    def sum(self, axis=None, keepdims=False):
        return _op("sum")(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _op("mean")(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        return _op("reshape")(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    def transpose(self, *axes):
        return _op("transpose")(self, axes or None)

    @property
    def T(self):
        return _op("transpose")(self, None)

    def exp(self):
        return _op("exp")(self)

    def log(self):
        return _op("log")(self)

    def tanh(self):
        return _op("tanh")(self)

    def relu(self):
        return _op("relu")(self)


# Tensor's operators (a + b, a @ b, a[i], a.sum(), ...) call the functional ops, which sit one layer up in
# minipeft.ops. autograd does not import them (data flows down): minipeft.ops registers them here once.
TENSOR_OPS = ("add", "sub", "mul", "div", "neg", "pow", "matmul", "getitem", "sum", "mean", "reshape", "transpose",
              "exp", "log", "tanh", "relu")
_TENSOR_OPS: dict[str, Any] = {}


def register_tensor_ops(**fns) -> None:
    """Give Tensor's operators their implementations, e.g. register_tensor_ops(add=ops.add, ...)."""
    unknown = sorted(set(fns) - set(TENSOR_OPS))
    if unknown:
        raise ValueError(f"register_tensor_ops: {unknown} are not Tensor operators; known: {list(TENSOR_OPS)}")
    _TENSOR_OPS.update(fns)


def _op(name: str):
    try:
        return _TENSOR_OPS[name]
    except KeyError:
        raise RuntimeError(f"Tensor operator '{name}' has no implementation yet: `import minipeft` (or "
                           "minipeft.ops) registers them") from None


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from root, each before the tensors it was computed from (iterative DFS)."""
    order: list[Tensor] = []
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for inp in t._node.inputs:
                if inp is not None and inp.requires_grad and id(inp) not in seen:
                    stack.append((inp, False))
    order.reverse()
    return order


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Create a Tensor (float data defaults to float32, see backend.set_default_dtype)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
