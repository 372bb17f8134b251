"""The QLoRA op: LoRA's op (op.py) with the frozen weight held in 4 bits and dequantized on the fly.

    y = x W0^T + b + s * (dropout(x) A^T) B^T,        W0 = dequantize(qweight)   (NF4, QLoRA's doubleDequant)

The difference from LoRA is what is kept between the passes: LoRA's op saves W0 (a float matrix it
did not have to make); this op saves the 4-bit `qweight` and dequantizes W0 again in backward, so a
float copy of the frozen weight exists only while one product uses it. W0 is an option, not an input:
it cannot get a gradient. A and B are float (float32 in training) and train as in LoRA; backward forms
dx, dA and dB (and db if the bias trains), exactly LoRA's formulas.

This file is the reference: frozen and low-rank paths separate, as the equation reads. qlora_fast.py
folds them into one product, W0 + s B A, as LoRA's fast path does; tests check the two equal, and this op
equal to LoRA's on the dequantized weight.
"""

from __future__ import annotations

from minipeft.autograd import Function, Tensor
from minipeft.ops._util import mm
from minipeft.ops.fastpath import pick
from minipeft.peft.tuners.lora.op import lora_inputs
from minipeft.quant.linear4bit import QuantState


class QLoraLinearFn(Function):
    """LoraLinearFn with W0 = dequantize(qweight): y = x W0^T + b + s (dropout(x) A^T) B^T, W0 never stored."""

    @staticmethod
    def forward(ctx, x, b, A, B, qweight: QuantState, scale=1.0, dropout_p=0.0):
        W0 = qweight.dequantize()                                    # (d, k) a temporary, freed after forward
        d, s, x2, keep, xd = lora_inputs(x, W0, b, A, B, scale, dropout_p)
        h = mm(xd, A.T)                                              # (N, r) down-projection
        y = mm(x2, W0.T)                                             # (N, d) the frozen path
        y += s * mm(h, B.T)                                          # (N, d) plus the low-rank path
        if b is not None:
            y += b
        ctx.save_for_backward(xd, keep, h, qweight, A, B, s, x.shape)
        return y.reshape(*x.shape[:-1], d)

    @staticmethod
    def backward(ctx, dout):
        # as LoRA's: y = x W0^T + b + s h B^T with h = xd A^T, xd = x * keep, so
        #   dB = s dy^T h;  dh = s dy B;  dA = dh^T xd;  dx = dy W0 + (dh A) * keep;  db = sum over rows of dy
        # with W0 dequantized again from the 4-bit weight; W0 is not an input, so there is no dW0 at all
        xd, keep, h, qweight, A, B, s, xshape = ctx.saved
        nx, nb, nA, nB = ctx.needs_input_grad
        dy = dout.reshape(-1, qweight.shape[0])                      # (N, d)
        dB = s * mm(dy.T, h) if nB else None                         # (d, r)
        dh = s * mm(dy, B) if (nA or nx) else None                   # (N, r)
        dA = mm(dh.T, xd) if nA else None                            # (r, k)
        dx = None
        if nx:
            dxd = mm(dh, A)                                          # (N, k) through the adapter
            dx = mm(dy, qweight.dequantize()) + (dxd if keep is None else dxd * keep)
            dx = dx.reshape(xshape)
        db = dy.sum(axis=0) if nb else None                          # (d,)
        return dx, db, dA, dB


def qlora_linear(x: Tensor, qweight: QuantState, b: Tensor | None, A: Tensor, B: Tensor, scale: float,
                 dropout_p: float = 0.0) -> Tensor:
    """y = x dequantize(qweight)^T + b + scale * (dropout(x) A^T) B^T."""
    return pick(QLoraLinearFn).apply(x, b, A, B, qweight=qweight, scale=scale, dropout_p=dropout_p)
