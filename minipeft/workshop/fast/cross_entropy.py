"""Fast path of cross-entropy: no max shift when the logits are bounded, row sums as a matrix-vector product.

Same numbers as `loss.CrossEntropyFn` (tested equal); read that one first. The (N, V) logits are the largest
array of a training step, so every pass over them counts:

- softmax(z) = exp(z - c) / sum exp(z - c) for any row constant c; the row max c only keeps exp in range.
  When every row's max lies within +-SHIFT_FREE_BOUND, exp(z) is exponentiated unshifted: one (N, V) pass fewer
  (on the CPU; on the GPU reading the bound back would be a device sync, so there the shift is always done).
- the row sums are `e @ ones(V)`, a matrix-vector product, much faster than `e.sum(axis=1)` at these shapes;
- the forward keeps the unnormalised e = exp(z - c) and its row sums s, and the backward normalises and scales
  in one pass: dz = e * (g / s).

Measured speed-ups: BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function
from minipeft.ops.fastpath import fast_path_of
from minipeft.ops.loss import CrossEntropyFn, check_cross_entropy_args
from minipeft.workshop.fast._shared import SHIFT_FREE_BOUND


@fast_path_of(CrossEntropyFn)
class ShiftFreeCrossEntropyFn(Function):
    """CrossEntropyFn's numbers from an unnormalised (and, when safe, unshifted) softmax."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100):
        xp = backend.xp()
        V = logits.shape[-1]
        z, valid, n, tt = check_cross_entropy_args(logits, targets, ignore_index)
        m = z.max(axis=1, keepdims=True)                              # (N, 1) row max
        # reading the bound back would cost a device sync on the GPU: there the shift is always done
        shift = backend.is_gpu() or not (z.shape[0] and -SHIFT_FREE_BOUND <= float(m.min())
                                         and float(m.max()) <= SHIFT_FREE_BOUND)
        if shift:
            e = z - m                                                 # one (N, V) buffer, updated in place
            xp.exp(e, out=e)                                          # e = exp(z - m), unnormalised softmax
        else:
            e = xp.exp(z)                                             # no shift needed (see SHIFT_FREE_BOUND):
            #                                                           one (N, V) pass fewer
        s = (e @ xp.ones(V, dtype=z.dtype))[:, None]                  # (N, 1) row sums as a matrix-vector product
        lse = xp.log(s[:, 0]) + m[:, 0] if shift else xp.log(s[:, 0])  # logsumexp(z)
        nll = lse - z[xp.arange(z.shape[0]), tt]                     # logsumexp - z_target
        ctx.save_for_backward(e, s, tt, valid, n, logits.shape)
        return (nll * valid).sum().astype(logits.dtype) / n.astype(logits.dtype)

    @staticmethod
    def backward(ctx, dout):
        # loss = mean_valid(logsumexp(z) - z_t)  =>  dz = (softmax(z) - onehot(t)) * dloss / n, 0 on ignored rows
        # softmax(z) = e / s, so the normalisation and the scaling are one pass over the (N, V) buffer
        e, s, tt, valid, n, shape = ctx.saved
        xp = backend.xp()
        g = (valid[:, None] * (dout / n)).astype(e.dtype)            # (N, 1) dloss / n per row, 0 if ignored
        dz = e * (g / s)
        dz[xp.arange(dz.shape[0]), tt] -= g[:, 0]
        return dz.reshape(shape), None
