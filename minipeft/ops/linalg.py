"""Matrix products: batched matmul and the fused linear layer `x @ W.T + b`."""

from __future__ import annotations

from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm, unbroadcast


class MatMulFn(Function):
    """y = a @ b, batched, with broadcast batch dims."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} @ {b.shape} do not fit; need (..., n, k) @ (..., k, m)")
        check_same_dtype("matmul", a=a, b=b)
        ctx.save_for_backward(a, b)
        return mm(a, b)

    @staticmethod
    def backward(ctx, dout):
        # y = a @ b  =>  da = dy @ b^T, db = a^T @ dy  (summed over broadcast batch dims)
        a, b = ctx.saved
        na, nb = ctx.needs_input_grad
        da = unbroadcast(mm(dout, b.swapaxes(-1, -2)), a.shape) if na else None
        db = unbroadcast(mm(a.swapaxes(-1, -2), dout), b.shape) if nb else None
        return da, db


class LinearFn(Function):
    """y = x W^T + b with W stored (out, in) like PyTorch; x is (..., in)."""

    @staticmethod
    def forward(ctx, x, W, b=None):
        check_float("linear", "x", x)
        if W.ndim != 2 or x.shape[-1] != W.shape[1] or (b is not None and b.shape != (W.shape[0],)):
            bs = None if b is None else b.shape
            raise ValueError(f"linear: x {x.shape}, W {W.shape}, b {bs} do not fit; need x (..., in), "
                             f"W (out, in), b (out,)")
        check_same_dtype("linear", x=x, W=W, b=b)
        x2 = x.reshape(-1, x.shape[-1])                      # (N, in)
        y = mm(x2, W.T)                                      # (N, out)
        if b is not None:
            y += b
        ctx.save_for_backward(x2, W, x.shape)
        return y.reshape(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, dout):
        # y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum_rows dy
        x2, W, xshape = ctx.saved
        nx, nW, nb = ctx.needs_input_grad
        dy = dout.reshape(-1, W.shape[0])                    # (N, out)
        dx = mm(dy, W).reshape(xshape) if nx else None
        dW = mm(dy.T, x2) if nW else None                    # skipped for a frozen weight
        db = dy.sum(axis=0) if nb else None
        return dx, dW, db


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return MatMulFn.apply(a, b)


def linear(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """y = x @ W.T + b, W of shape (out, in)."""
    return LinearFn.apply(x, W, b)
