"""The LoRA op: a frozen linear layer plus a trainable low-rank update, one explicit forward/backward.

    y = x W0^T + b + s * (dropout(x) A^T) B^T        x: (..., k),  A: (r, k),  B: (d, r),
                                                     s = alpha / r  (alpha / sqrt(r) with use_rslora)

W0 (d, k) stays frozen, so backward forms only dx, dA and dB: the (d x k) weight gradient
that full fine-tuning pays for is never computed. dW0 and db are formed only if the caller
made them trainable (e.g. bias="all"). This file is the reference: the two paths, frozen and
low-rank, exactly as the equation reads. The fast path (fast.py beside it) folds them into one
product when there is no dropout; the tests check the two equal.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm
from minipeft.ops.fastpath import pick


def check_lora_inputs(x, W0, b, A, B) -> None:
    """Shapes x (..., k), W0 (d, k), b (d,), A (r, k), B (d, r), one float dtype; a clear error otherwise."""
    check_float("lora_linear", "x", x)
    d, k = W0.shape
    r = A.shape[0]
    if x.shape[-1] != k or A.shape != (r, k) or B.shape != (d, r) or (b is not None and b.shape != (d,)):
        raise ValueError(f"lora_linear: x {x.shape}, W0 {W0.shape}, b {None if b is None else b.shape}, "
                         f"A {A.shape}, B {B.shape} do not fit; need x (..., k), W0 (d, k), b (d,), "
                         f"A (r, k), B (d, r)")
    check_same_dtype("lora_linear", x=x, W0=W0, b=b, A=A, B=B)


def dropout_mask(x2, p: float):
    """keep / (1 - p): the scaled mask dropout multiplies the adapter's input by (None when p = 0)."""
    if p == 0.0:
        return None
    return (backend.rng().random(x2.shape, dtype=x2.dtype) >= p) * x2.dtype.type(1 / (1 - p))


def lora_inputs(x, W0, b, A, B, scale: float, dropout_p: float):
    """Checked inputs as the forward uses them: (d, s, x2 (N, k), keep (N, k) or None, xd = dropout(x2))."""
    check_lora_inputs(x, W0, b, A, B)
    x2 = x.reshape(-1, W0.shape[1])                                  # (N, k)
    keep = dropout_mask(x2, dropout_p)                               # (N, k) or None
    xd = x2 if keep is None else x2 * keep                           # (N, k) dropout(x), the adapter's input
    return W0.shape[0], x.dtype.type(scale), x2, keep, xd


class LoraLinearFn(Function):
    """y = x W0^T + b + s (dropout(x) A^T) B^T; x (..., k), W0 (d, k), A (r, k), B (d, r) -> (..., d)."""

    @staticmethod
    def forward(ctx, x, W0, b, A, B, scale=1.0, dropout_p=0.0):
        return lora_forward(ctx, x, W0, b, A, B, scale, dropout_p, kept=W0)

    @staticmethod
    def backward(ctx, dout):
        return lora_backward(ctx, dout, ctx.needs_input_grad)


def lora_forward(ctx, x, W0, b, A, B, scale: float, dropout_p: float, kept):
    """The forward of LoRA's op, shared with QLoRA's; `kept` is what backward gets W0 back from (W0 itself here,
    QLoRA's 4-bit weight there)."""
    d, s, x2, keep, xd = lora_inputs(x, W0, b, A, B, scale, dropout_p)
    h = mm(xd, A.T)                                                  # (N, r) down-projection
    y = mm(x2, W0.T)                                                 # (N, d) the frozen path
    y += s * mm(h, B.T)                                              # (N, d) plus the low-rank path
    if b is not None:
        y += b
    ctx.save_for_backward(x2, xd, keep, h, kept, A, B, s, x.shape)
    return y.reshape(*x.shape[:-1], d)                               # (..., d)


def lora_backward(ctx, dout, needs: tuple[bool, ...], frozen_weight=lambda kept: kept):
    """The backward of LoRA's op, shared with QLoRA's: (dx, dW0, db, dA, dB) for the inputs that need one (`needs`);
    `frozen_weight(kept)` gives W0 back from what forward kept (QLoRA's dequantizes it)."""
    # forward was y = x W0^T + b + s h B^T with h = xd A^T and xd = x * keep, so
    #   dB = s dy^T h;  dh = s dy B;  dA = dh^T xd;  dx = dy W0 + (dh A) * keep
    #   dW0 = dy^T x and db = sum over rows of dy, only when W0 / b are trainable
    x2, xd, keep, h, kept, A, B, s, xshape = ctx.saved
    nx, nW0, nb, nA, nB = needs
    dy = dout.reshape(-1, kept.shape[0])                             # (N, d)
    dB = s * mm(dy.T, h) if nB else None                             # (d, r)
    dh = s * mm(dy, B) if (nA or nx) else None                       # (N, r)
    dA = mm(dh.T, xd) if nA else None                                # (r, k)
    dx = None
    if nx:
        dxd = mm(dh, A)                                              # (N, k) through the adapter
        dx = mm(dy, frozen_weight(kept)) + (dxd if keep is None else dxd * keep)  # (N, k) plus the frozen path
        dx = dx.reshape(xshape)
    dW0 = mm(dy.T, x2) if nW0 else None                              # (d, k) never formed for a frozen base
    db = dy.sum(axis=0) if nb else None                              # (d,)
    return dx, dW0, db, dA, dB


def lora_linear(x: Tensor, W0: Tensor, b: Tensor | None, A: Tensor, B: Tensor, scale: float,
                dropout_p: float = 0.0) -> Tensor:
    """y = x W0^T + b + scale * (dropout(x) A^T) B^T (dropout only when dropout_p > 0)."""
    return pick(LoraLinearFn).apply(x, W0, b, A, B, scale=scale, dropout_p=dropout_p)
