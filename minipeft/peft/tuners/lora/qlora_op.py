"""The QLoRA op: LoRA's op (op.py) with the frozen weight held in 4 bits and dequantized on the fly.

    y = x W0^T + b + s * (dropout(x) A^T) B^T,        W0 = dequantize(qweight)   (NF4, QLoRA's doubleDequant)

The one difference from LoRA is the dequantization: this op runs LoRA's forward and backward (op.py's
lora_forward, lora_backward) on W0 = dequantize(qweight), keeping the 4-bit `qweight` between the passes
and dequantizing W0 again in backward, so a float copy of the frozen weight exists only while one product
uses it. W0 is an option, not an input: it cannot get a gradient. A and B are float (float32 in training)
and train as in LoRA; backward forms dx, dA and dB (and db if the bias trains).

This file is the reference: frozen and low-rank paths separate, as the equation reads. qlora_fast.py
folds them into one product, W0 + s B A, as LoRA's fast path does; tests check the two equal, and this op
equal to LoRA's on the dequantized weight.
"""

from __future__ import annotations

from minipeft.autograd import Function, Tensor
from minipeft.ops.fastpath import pick
from minipeft.peft.tuners.lora.op import lora_backward, lora_forward
from minipeft.quant.linear4bit import QuantState


class QLoraLinearFn(Function):
    """LoraLinearFn with W0 = dequantize(qweight): y = x W0^T + b + s (dropout(x) A^T) B^T, W0 never stored."""

    @staticmethod
    def forward(ctx, x, b, A, B, qweight: QuantState, scale=1.0, dropout_p=0.0):
        W0 = qweight.dequantize()                                    # (d, k) a temporary, freed after forward
        return lora_forward(ctx, x, W0, b, A, B, scale, dropout_p, kept=qweight)

    @staticmethod
    def backward(ctx, dout):
        # LoRA's backward, with W0 dequantized again from the 4-bit weight; W0 is not an input, so no dW0 at all
        nx, nb, nA, nB = ctx.needs_input_grad
        dx, _, db, dA, dB = lora_backward(ctx, dout, (nx, False, nb, nA, nB), lambda q: q.dequantize())
        return dx, db, dA, dB


def qlora_linear(x: Tensor, qweight: QuantState, b: Tensor | None, A: Tensor, B: Tensor, scale: float,
                 dropout_p: float = 0.0) -> Tensor:
    """y = x dequantize(qweight)^T + b + scale * (dropout(x) A^T) B^T."""
    return pick(QLoraLinearFn).apply(x, b, A, B, qweight=qweight, scale=scale, dropout_p=dropout_p)
