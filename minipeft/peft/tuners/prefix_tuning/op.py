"""Prefix tuning's reparameterization as one op: the MLP that makes the prefix table from n small vectors.

    A = E W1^T + b1        (n, h)        E (n, d): one trainable vector per virtual token
    H = tanh(A)            (n, h)
    Y = H W2^T + b2        (n, 2 L d)    every layer's key and value for each virtual token

Li & Liang (2021) train Y through this MLP because optimizing the table directly was unstable for them;
after training only Y is kept (the fold), so inference costs nothing extra. The gradient that reaches Y
comes from attention (minipeft.ops.multihead_attention: dK = dS^T Q / sqrt(hs) and dV = P^T dO at the
prefix's key and value rows), summed over the batch that shares the prefix.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, mm


class PrefixProjectionFn(Function):
    """Y = tanh(E W1^T + b1) W2^T + b2; E (n, d), W1 (h, d), b1 (h,), W2 (D, h), b2 (D,) -> Y (n, D)."""

    @staticmethod
    def forward(ctx, E, W1, b1, W2, b2):
        if not (E.ndim == 2 and W1.shape == (b1.shape[0], E.shape[1]) and W2.shape == (b2.shape[0], b1.shape[0])):
            raise ValueError(f"prefix_projection: shapes E {E.shape}, W1 {W1.shape}, b1 {b1.shape}, W2 {W2.shape}, "
                             f"b2 {b2.shape} must be (n, d), (h, d), (h,), (D, h), (D,)")
        check_same_dtype("prefix_projection", E=E, W1=W1, b1=b1, W2=W2, b2=b2)
        H = backend.xp().tanh(mm(E, W1.T) + b1)                 # (n, h)
        ctx.save_for_backward(E, W1, W2, H)
        return mm(H, W2.T) + b2                                 # (n, D)

    @staticmethod
    def backward(ctx, dY):
        # Y = H W2^T + b2      =>  dW2 = dY^T H,  db2 = sum_rows dY,  dH = dY W2
        # H = tanh(A)          =>  dA = dH * (1 - H^2)
        # A = E W1^T + b1      =>  dW1 = dA^T E,  db1 = sum_rows dA,  dE = dA W1
        E, W1, W2, H = ctx.saved
        nE, nW1, nb1, nW2, nb2 = ctx.needs_input_grad
        dW2 = mm(dY.T, H) if nW2 else None                      # (D, h)
        db2 = dY.sum(axis=0) if nb2 else None                   # (D,)
        dE = dW1 = db1 = None
        if nE or nW1 or nb1:
            dA = mm(dY, W2) * (1 - H * H)                       # (n, h)
            dW1 = mm(dA.T, E) if nW1 else None                  # (h, d)
            db1 = dA.sum(axis=0) if nb1 else None               # (h,)
            dE = mm(dA, W1) if nE else None                     # (n, d)
        return dE, dW1, db1, dW2, db2


def prefix_projection(E: Tensor, W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> Tensor:
    """The prefix table (n, 2 L d) the reparameterization MLP makes from E (n, d)."""
    return PrefixProjectionFn.apply(E, W1, b1, W2, b2)
