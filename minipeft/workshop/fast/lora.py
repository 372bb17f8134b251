"""The LoRA op's fast path: without dropout, the frozen and low-rank products fold into one.

(x A^T) B^T = x (B A)^T, so

    y = x (W0 + s B A)^T + b        and        dx = dy W0 + s (dy B) A = dy (W0 + s B A)

Forming W_eff = W0 + s B A costs d*r*k multiply-adds, while the low-rank path it replaces costs
N*r*d on the way forward and N*r*k on the way back, plus a pass over the (N, d) output and the
(N, k) input gradient to add it in: N (d + k) / (d k) times less work, 32x for N = 2048 tokens through a
128 x 128 projection. W_eff is a temporary
(the layer's W0 is never written); it is what merge() stores, so the unmerged model's step computes
the merged model's product. h = x A^T is still formed when B trains, because dB = s dy^T h needs it.
With dropout, x A^T sees dropout(x) while x W0^T sees x, so no fold exists and the two paths run
separately, as in the reference (op.py).

Folding pays when N is large; for a few rows (decoding one token at a time with the KV cache) the fold's
d*r*k is the larger cost: the low-rank path costs N*r*(d + k), so the layer folds only when
N*(d + k) >= d*k, and below that (N < 64 for a 128 x 128 projection) runs the two paths as the reference does.
Registered as LoraLinearFn's fast path; tested equal to it.
"""

from __future__ import annotations

from minipeft.ops._util import mm
from minipeft.ops.fastpath import fast_path_of
from minipeft.peft.tuners.lora.op import LoraLinearFn, lora_inputs


@fast_path_of(LoraLinearFn)
class FoldedLoraLinearFn(LoraLinearFn):
    @staticmethod
    def forward(ctx, x, W0, b, A, B, scale=1.0, dropout_p=0.0):
        d, s, x2, keep, xd = lora_inputs(x, W0, b, A, B, scale, dropout_p)
        W_eff = None
        N, k = x2.shape
        fold = keep is None and N * (d + k) >= d * k          # see the module docstring
        hs = None  # (N, r) s * dropout(x) A^T, scaled while small: the separate low-rank path, and dB's input
        if not fold or ctx.needs_input_grad[4]:                      # folded and B frozen (inference): not needed
            hs = mm(xd, A.T) * s
        if fold:
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
        # as the reference, with hs = s h, and when folded dx = dy (W0 + s B A) = dy W_eff: one product
        x2, xd, keep, hs, W0, W_eff, A, B, s, xshape = ctx.saved
        nx, nW0, nb, nA, nB = ctx.needs_input_grad
        dy = dout.reshape(-1, W0.shape[0])                           # (N, d)
        dB = mm(dy.T, hs) if nB else None                            # (d, r)
        dh = mm(dy, B) * s if (nA or (nx and W_eff is None)) else None  # (N, r)
        dA = mm(dh.T, xd) if nA else None                            # (r, k)
        dx = None
        if nx and W_eff is not None:
            dx = mm(dy, W_eff).reshape(xshape)
        elif nx:
            dxl = mm(dh, A)                                          # (N, k) through the adapter
            if keep is not None:
                dxl *= keep
            dx = mm(dy, W0)
            dx += dxl
            dx = dx.reshape(xshape)
        dW0 = mm(dy.T, x2) if nW0 else None
        db = dy.sum(axis=0) if nb else None
        return dx, dW0, db, dA, dB
