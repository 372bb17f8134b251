"""The QLoRA op's fast path: LoRA's fold (fast.py) on a dequantized weight.

Without dropout, y = x (W0 + s B A)^T + b and dx = dy (W0 + s B A), so the frozen and low-rank paths
become one product with W_eff = dequantize(qweight) + s B A. The dequantization already writes a fresh
(d, k) float matrix each pass; adding s B A into it in place costs d*k*r multiply-adds and no extra
memory, and saves the low-rank path's N*r*(d + k) and the passes that add it in. As in the reference,
W_eff is not kept between the passes: backward rebuilds it from the 4-bit weight (and the current A, B)
for dx. h = x A^T is still formed when B trains (dB = s dy^T h). With dropout no fold exists and the
reference runs. Registered as QLoraLinearFn's fast path; tested equal to it (tests/test_fast_ops.py).
"""

from __future__ import annotations

from minipeft.ops._util import mm
from minipeft.ops.fastpath import fast_path_of
from minipeft.peft.tuners.lora.op import lora_inputs
from minipeft.peft.tuners.lora.qlora_op import QLoraLinearFn


def _folded(qweight, A, B, s):
    """W_eff = dequantize(qweight) + s B A, added into the fresh dequantized array."""
    W = qweight.dequantize()                                         # (d, k)
    W += mm(B, A) * s
    return W


@fast_path_of(QLoraLinearFn)
class FoldedQLoraLinearFn(QLoraLinearFn):
    @staticmethod
    def forward(ctx, x, b, A, B, qweight, scale=1.0, dropout_p=0.0):
        if dropout_p > 0.0:                                          # dropout(x) A^T vs x W0^T: nothing to fold
            ctx.options["folded"] = False
            return QLoraLinearFn.forward(ctx, x, b, A, B, qweight, scale, dropout_p)
        ctx.options["folded"] = True
        W = qweight.dequantize()                                     # (d, k) fresh float array
        d, s, x2, _, _ = lora_inputs(x, W, b, A, B, scale, 0.0)
        W += mm(B, A) * s                                            # W_eff = W0 + s B A, folded in place
        hs = mm(x2, A.T) * s if ctx.needs_input_grad[3] else None    # (N, r) s x A^T, dB's input
        y = mm(x2, W.T)                                              # (N, d) both paths in one product
        if b is not None:
            y += b
        ctx.save_for_backward(x2, hs, qweight, A, B, s, x.shape)
        return y.reshape(*x.shape[:-1], d)

    @staticmethod
    def backward(ctx, dout):
        if not ctx.options["folded"]:
            return QLoraLinearFn.backward(ctx, dout)
        # as the reference, with hs = s h and no dropout: dx = dy (W0 + s B A) = dy W_eff, W_eff rebuilt here
        x2, hs, qweight, A, B, s, xshape = ctx.saved
        nx, nb, nA, nB = ctx.needs_input_grad
        dy = dout.reshape(-1, qweight.shape[0])                      # (N, d)
        dB = mm(dy.T, hs) if nB else None                            # (d, r)
        dA = mm((mm(dy, B) * s).T, x2) if nA else None               # (r, k)
        dx = mm(dy, _folded(qweight, A, B, s)).reshape(xshape) if nx else None
        db = dy.sum(axis=0) if nb else None
        return dx, db, dA, dB
