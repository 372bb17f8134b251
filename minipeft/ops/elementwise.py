"""Elementwise ops with NumPy broadcasting; backward sums over the broadcast axes.

GELU has a fast path (in-place passes over cache-sized chunks) in workshop/fast/gelu.py, tested equal to GELUFn.
"""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, unbroadcast
from minipeft.ops.fastpath import pick


def _pair(op: str, a, b):
    """Turn python scalars into tensors of the other operand's dtype; check float dtypes agree."""
    if not isinstance(a, Tensor):
        a = Tensor(backend.xp().asarray(a, dtype=b.dtype if b.dtype.kind == "f" else None))
    if not isinstance(b, Tensor):
        b = Tensor(backend.xp().asarray(b, dtype=a.dtype if a.dtype.kind == "f" else None))
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        check_same_dtype(op, a=a.data, b=b.data)
    try:
        backend.xp().broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


class AddFn(Function):
    """y = a + b, broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, dout):
        # y = a + b  =>  da = dy, db = dy (summed over broadcast axes)
        sa, sb = ctx.saved
        na, nb = ctx.needs_input_grad
        return (unbroadcast(dout, sa) if na else None, unbroadcast(dout, sb) if nb else None)


class SubFn(Function):
    """y = a - b, broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, dout):
        # y = a - b  =>  da = dy, db = -dy
        sa, sb = ctx.saved
        na, nb = ctx.needs_input_grad
        return (unbroadcast(dout, sa) if na else None, unbroadcast(-dout, sb) if nb else None)


class MulFn(Function):
    """y = a * b, broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):
        # y = a * b  =>  da = dy * b, db = dy * a
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        return (unbroadcast(dout * b, a.shape) if na else None, unbroadcast(dout * a, b.shape) if nb else None)


class DivFn(Function):
    """y = a / b, broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, dout):
        # y = a / b  =>  da = dy / b, db = -dy * a / b^2
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        da = unbroadcast(dout / b, a.shape) if na else None
        db = unbroadcast(-dout * a / (b * b), b.shape) if nb else None
        return da, db


class NegFn(Function):
    """y = -a."""

    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, dout):
        # y = -a  =>  da = -dy
        return (-dout,)


class PowFn(Function):
    """y = a ** b, broadcasting (b may be a tensor too)."""

    @staticmethod
    def forward(ctx, a, b):
        y = a**b
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, dout):
        # y = a^b  =>  da = dy * b * a^(b-1), db = dy * y * log(a)   (db needs a > 0)
        a, b, y = ctx.saved
        na, nb = ctx.needs_input_grad
        da = unbroadcast(dout * b * a ** (b - 1), a.shape) if na else None
        db = unbroadcast(dout * y * backend.xp().log(a), b.shape) if nb else None
        return da, db


class ExpFn(Function):
    """y = e^a."""

    @staticmethod
    def forward(ctx, a):
        y = backend.xp().exp(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dout):
        # y = e^a  =>  da = dy * y
        (y,) = ctx.saved
        return (dout * y,)


class LogFn(Function):
    """y = log a (natural log)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return backend.xp().log(a)

    @staticmethod
    def backward(ctx, dout):
        # y = log a  =>  da = dy / a
        (a,) = ctx.saved
        return (dout / a,)


class TanhFn(Function):
    """y = tanh a."""

    @staticmethod
    def forward(ctx, a):
        y = backend.xp().tanh(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dout):
        # y = tanh a  =>  da = dy * (1 - y^2)
        (y,) = ctx.saved
        return (dout * (1 - y * y),)


class ReLUFn(Function):
    """y = max(a, 0)."""

    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save_for_backward(mask)
        return a * mask

    @staticmethod
    def backward(ctx, dout):
        # y = max(a, 0)  =>  da = dy * [a > 0]
        (mask,) = ctx.saved
        return (dout * mask,)


GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715   # the cubic coefficient: Hendrycks & Gimpel (2016) fitted it so the tanh form tracks the erf GELU


class GELUFn(Function):
    """GPT-2's tanh approximation: gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.xp()
        u = GELU_C * (x + GELU_A * x**3)                  # (...), x's shape throughout
        t = xp.tanh(u)
        ctx.save_for_backward(x, t)
        return 0.5 * x * (1 + t)

    @staticmethod
    def backward(ctx, dout):
        # forward was y = 0.5 x (1 + t), t = tanh(u), u = c (x + 0.044715 x^3), c = sqrt(2/pi), so
        #   dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,   du/dx = c (1 + 3 * 0.044715 x^2)
        x, t = ctx.saved
        du = GELU_C * (1 + 3 * GELU_A * x * x)
        return (dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du),)


def add(a, b) -> Tensor:
    return AddFn.apply(*_pair("add", a, b))


def sub(a, b) -> Tensor:
    return SubFn.apply(*_pair("sub", a, b))


def mul(a, b) -> Tensor:
    return MulFn.apply(*_pair("mul", a, b))


def div(a, b) -> Tensor:
    return DivFn.apply(*_pair("div", a, b))


def pow(a, b) -> Tensor:  # noqa: A001 (mirrors torch.pow)
    return PowFn.apply(*_pair("pow", a, b))


def neg(a: Tensor) -> Tensor:
    return NegFn.apply(a)


def exp(a: Tensor) -> Tensor:
    return ExpFn.apply(a)


def log(a: Tensor) -> Tensor:
    return LogFn.apply(a)


def tanh(a: Tensor) -> Tensor:
    return TanhFn.apply(a)


def relu(a: Tensor) -> Tensor:
    return ReLUFn.apply(a)


def gelu(a: Tensor) -> Tensor:
    return pick(GELUFn).apply(a)
