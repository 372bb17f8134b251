"""Reductions and shape ops: sum, mean, reshape, broadcast_to, transpose/permute, concat, split, indexing."""

from __future__ import annotations

import builtins

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import scatter_add, unbroadcast
from minipeft.ops.fastpath import pick


def _norm_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dims")
    return tuple(sorted(a % ndim for a in axes))


class SumFn(Function):
    """y = sum of x over the given axes."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = _norm_axes(axis, x.ndim)
        ctx.save_for_backward(x.shape, axes, keepdims)
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        # y = sum_axes x  =>  dx = dy broadcast back over the summed axes
        shape, axes, keepdims = ctx.saved
        xp = backend.xp()
        if not keepdims:
            dout = xp.expand_dims(dout, axes)
        return (xp.broadcast_to(dout, shape).copy(),)


class MeanFn(Function):
    """y = mean of x over the given axes."""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = _norm_axes(axis, x.ndim)
        n = 1
        for a in axes:
            n *= x.shape[a]
        ctx.save_for_backward(x.shape, axes, keepdims, n)
        return x.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        # y = sum_axes x / n  =>  dx = dy / n broadcast back
        shape, axes, keepdims, n = ctx.saved
        xp = backend.xp()
        if not keepdims:
            dout = xp.expand_dims(dout, axes)
        return (xp.broadcast_to(dout / n, shape).copy(),)


class ReshapeFn(Function):
    """y = x with a new shape (same elements, same order)."""

    @staticmethod
    def forward(ctx, x, shape=()):
        ctx.save_for_backward(x.shape)
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} to {shape}") from None

    @staticmethod
    def backward(ctx, dout):
        # y = x laid out in a new shape  =>  dx = dy laid out in x's shape
        (shape,) = ctx.saved
        return (dout.reshape(shape),)


class BroadcastToFn(Function):
    """y = x repeated to a larger shape by broadcasting."""

    @staticmethod
    def forward(ctx, x, shape=()):
        ctx.save_for_backward(x.shape)
        if tuple(shape) == x.shape:
            return x
        try:
            return backend.xp().broadcast_to(x, shape).copy()  # a view with stride-0 axes -> own contiguous array
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast a tensor of shape {x.shape} to {shape}") from None

    @staticmethod
    def backward(ctx, dout):
        # y = x repeated along the added / stretched axes  =>  dx = dy summed over those axes
        (shape,) = ctx.saved
        return (unbroadcast(dout, shape),)


class TransposeFn(Function):
    """y = x with its axes permuted."""

    @staticmethod
    def forward(ctx, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} dims of {x.shape}")
        ctx.save_for_backward(axes)
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, dout):
        # y = permute(x, p)  =>  dx = permute(dy, argsort(p))
        (axes,) = ctx.saved
        inv = [0] * len(axes)
        for i, a in enumerate(axes):
            inv[a] = i
        return (dout.transpose(inv),)


class ConcatFn(Function):
    """y = the inputs joined along one axis."""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.save_for_backward(axis, [x.shape[axis] for x in xs])
        try:
            return backend.xp().concatenate(xs, axis=axis)
        except ValueError:
            raise ValueError(f"concat: shapes {[x.shape for x in xs]} do not match off axis {axis}") from None

    @staticmethod
    def backward(ctx, dout):
        # y = [x1, x2, ...] along axis  =>  dxi = the slice of dy that xi filled
        axis, sizes = ctx.saved
        grads, start = [], 0
        for n, need in zip(sizes, ctx.needs_input_grad, strict=True):
            idx = [slice(None)] * dout.ndim
            idx[axis] = slice(start, start + n)
            grads.append(dout[tuple(idx)] if need else None)
            start += n
        return tuple(grads)


def _is_basic(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


class GetItemFn(Function):
    """y = x[index] (slices, integers, integer arrays)."""

    @staticmethod
    def forward(ctx, x, index=None):
        ctx.save_for_backward(x.shape, x.dtype, index)
        try:
            return x[index]
        except IndexError as e:
            raise IndexError(f"getitem: index {index!r} is invalid for shape {x.shape}: {e}") from None

    @staticmethod
    def backward(ctx, dout):
        # y = x[idx]  =>  dx = zeros with dy added at idx (repeated indices accumulate)
        shape, dtype, index = ctx.saved
        dx = backend.xp().zeros(shape, dtype=dtype)
        if _is_basic(index):
            dx[index] = dout
        else:
            pick(scatter_add)(dx, index, dout)
        return (dx,)


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return SumFn.apply(x, axis=axis, keepdims=keepdims)


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    return MeanFn.apply(x, axis=axis, keepdims=keepdims)


def reshape(x: Tensor, shape) -> Tensor:
    return ReshapeFn.apply(x, shape=tuple(shape))


def broadcast_to(x: Tensor, shape) -> Tensor:
    """x repeated to `shape` by NumPy's broadcasting rules, like torch.broadcast_to / Tensor.expand."""
    return BroadcastToFn.apply(x, shape=tuple(shape))


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute the axes (all reversed when axes is None), like torch.permute / ndarray.transpose."""
    return TransposeFn.apply(x, axes=None if axes is None else tuple(axes))


permute = transpose


def concat(tensors, axis: int = 0) -> Tensor:
    if len(tensors) == 0:
        raise ValueError("concat: needs at least one tensor")
    return ConcatFn.apply(*tensors, axis=axis)


def getitem(x: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItemFn.apply(x, index=index)


def split(x: Tensor, sections, axis: int = 0) -> list[Tensor]:
    """Split along axis into equal parts (int) or parts of the given sizes (list), like torch.split."""
    n = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or n % sections:
            raise ValueError(f"split: {n} along axis {axis} does not divide into chunks of {sections}")
        sizes = [sections] * (n // sections)
    else:
        sizes = list(sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to {n} along axis {axis}")
    out, start = [], 0
    for s in sizes:
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(start, start + s)
        out.append(getitem(x, tuple(idx)))
        start += s
    return out

