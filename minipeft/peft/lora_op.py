"""The LoRA op: a frozen linear layer plus a trainable low-rank update, one explicit forward/backward.

    y = x W0^T + b + s * (dropout(x) A^T) B^T        A: (r, k),  B: (d, r),  s = alpha / r

W0 (d, k) stays frozen, so backward forms only dx, dA and dB: the (d x k) weight gradient
that full fine-tuning pays for is never computed. dW0 and db are formed only if the caller
made them trainable (e.g. bias="all").

Without dropout the two products fold into one: (x A^T) B^T = x (B A)^T, so

    y = x (W0 + s B A)^T + b        and        dx = dy W0 + s (dy B) A = dy (W0 + s B A)

Forming W_eff = W0 + s B A costs d*r*k multiply-adds, while the low-rank path it replaces costs
N*r*d on the way forward and N*r*k on the way back, plus a pass over the (N, d) output and the
(N, k) input gradient to add it in. For N = 2048 tokens that is ~2000x less work. W_eff is a
temporary: the layer's W0 is never written. It is what merge() stores, so the unmerged model's
step computes the merged model's product. h = x A^T is still formed, because dB = s dy^T h needs it.
With dropout, x A^T sees dropout(x) while x W0^T sees x, so no fold exists and the two paths run
separately.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm


class LoraLinearFn(Function):
    @staticmethod
    def forward(ctx, x, W0, b, A, B, scale=1.0, dropout_p=0.0):
        check_float("lora_linear", "x", x)
        d, k = W0.shape
        r = A.shape[0]
        if x.shape[-1] != k or A.shape != (r, k) or B.shape != (d, r) or (b is not None and b.shape != (d,)):
            raise ValueError(f"lora_linear: x {x.shape}, W0 {W0.shape}, b {None if b is None else b.shape}, "
                             f"A {A.shape}, B {B.shape} do not fit; need x (..., k), W0 (d, k), b (d,), "
                             f"A (r, k), B (d, r)")
        check_same_dtype("lora_linear", x=x, W0=W0, b=b, A=A, B=B)
        s = x.dtype.type(scale)
        x2 = x.reshape(-1, k)                                        # (N, k)
        keep = W_eff = None
        xd = x2
        if dropout_p > 0.0:
            keep = (backend.rng().random(x2.shape, dtype=x2.dtype) >= dropout_p) * x.dtype.type(1 / (1 - dropout_p))
            xd = x2 * keep                                           # (N, k) dropout(x)
        hs = None  # (N, r) s * dropout(x) A^T, scaled while small: the separate low-rank path, and dB's input
        if keep is not None or ctx.needs_input_grad[4]:              # folded and B frozen (inference): not needed
            hs = mm(xd, A.T) * s
        if keep is None:
            W_eff = W0 + mm(B, A) * s                                # (d, k) folded weight, a temporary
            y = mm(x2, W_eff.T)                                      # (N, d) both paths in one product
        else:
            y = mm(x2, W0.T)                                         # (N, d) frozen path
            y += mm(hs, B.T)                                         # low-rank path
        if b is not None:
            y += b
        ctx.save_for_backward(x2, xd, keep, hs, W0, W_eff, A, B, s, x.shape)
        return y.reshape(*x.shape[:-1], d)

    @staticmethod
    def backward(ctx, dout):
        # y = x W0^T + b + s * h B^T,  h = xd A^T,  xd = dropout(x) = x * keep
        # => dB = s * dy^T h;  dh = s * dy B;  dA = dh^T xd;  dx = dy W0 + (dh A) * keep
        #    (without dropout: dx = dy (W0 + s B A) = dy W_eff, one product)
        #    dW0 = dy^T x and db = sum dy, only when W0 / b are trainable
        x2, xd, keep, hs, W0, W_eff, A, B, s, xshape = ctx.saved
        nx, nW0, nb, nA, nB = ctx.needs_input_grad
        dy = dout.reshape(-1, W0.shape[0])                           # (N, d)
        dB = mm(dy.T, hs) if nB else None                            # (d, r)   hs = s * h
        dh = mm(dy, B) * s if (nA or (nx and keep is not None)) else None  # (N, r)
        dA = mm(dh.T, xd) if nA else None                            # (r, k)
        dx = None
        if nx and keep is None:
            dx = mm(dy, W_eff).reshape(xshape)
        elif nx:
            dxl = mm(dh, A)                                          # (N, k) through the adapter
            dxl *= keep
            dx = mm(dy, W0)
            dx += dxl
            dx = dx.reshape(xshape)
        dW0 = mm(dy.T, x2) if nW0 else None                          # never formed for a frozen base
        db = dy.sum(axis=0) if nb else None
        return dx, dW0, db, dA, dB


def lora_linear(x: Tensor, W0: Tensor, b: Tensor | None, A: Tensor, B: Tensor, scale: float,
                dropout_p: float = 0.0) -> Tensor:
    """y = x W0^T + b + scale * (dropout(x) A^T) B^T (dropout only when dropout_p > 0)."""
    return LoraLinearFn.apply(x, W0, b, A, B, scale=scale, dropout_p=dropout_p)
