"""Fast path of the chunked head + cross-entropy: each chunk's softmax as fast/cross_entropy.py computes it.

Same numbers as `head_loss.LinearCrossEntropyFn` (tested equal); read that one first, then
fast/cross_entropy.py. The chunks, the head's products and the gradients of h, W and b are the reference's; what
changes is the softmax of a chunk, done as ShiftFreeCrossEntropyFn does it: no max shift when the chunk's logits
are bounded (decided per chunk), row sums as a matrix-vector product, and the backward's normalisation and scaling
in one pass. The backward keeps, per row, the row sum s and the shift m (N numbers each), and per chunk whether
it was shifted, so it forms each chunk's exp(z - m) exactly as the forward did. When all rows fit one chunk, the
forward keeps that chunk's exp(z - m) instead (there is no memory to save by dropping it), so the backward spends
no second head product; then every number is the one `cross_entropy(linear(h, W, b), t)` computes on the fast
path, bit for bit, with the same products.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function
from minipeft.ops.fastpath import fast_path_of
from minipeft.ops.head_loss import LinearCrossEntropyFn, add_chunk_grads, check_head_args, chunk_logits
from minipeft.workshop.fast._shared import SHIFT_FREE_BOUND


@fast_path_of(LinearCrossEntropyFn)
class ShiftFreeLinearCrossEntropyFn(Function):
    """LinearCrossEntropyFn's numbers from an unnormalised (and, when safe, unshifted) softmax per chunk."""

    @staticmethod
    def forward(ctx, h, W, b, targets, ignore_index=-100, chunk_rows=None):
        xp = backend.xp()
        valid, n, tt, chunks = check_head_args(h, W, b, targets, ignore_index, chunk_rows)
        N, V = h.shape[0], W.shape[0]
        m, s, nll = (xp.empty(N, dtype=h.dtype) for _ in range(3))   # (N,) row max, row sum of e, -log p[target]
        shifted = []                                                 # per chunk: was exp(z - m) formed, or exp(z)
        keep, kept = len(chunks) == 1, None                          # one chunk: its e, kept for the backward
        for c in chunks:
            e = chunk_logits(h, W, b, c)                             # (rows, V): z, turned into e in place
            z_target = e[xp.arange(e.shape[0]), tt[c]]               # (rows,) taken before e overwrites z
            m[c] = e.max(axis=1)
            # reading the bound back would cost a device sync on the GPU: there the shift is always done
            shift = backend.is_gpu() or not (-SHIFT_FREE_BOUND <= float(m[c].min())
                                             and float(m[c].max()) <= SHIFT_FREE_BOUND)
            if shift:
                e -= m[c, None]
            xp.exp(e, out=e)                                         # e = exp(z - m), or exp(z) (see SHIFT_FREE_BOUND)
            s[c] = e @ xp.ones(V, dtype=e.dtype)                     # row sums as a matrix-vector product
            nll[c] = (xp.log(s[c]) + m[c] if shift else xp.log(s[c])) - z_target   # logsumexp(z) - z[target]
            shifted.append(shift)
            if keep:
                kept = e
        ctx.save_for_backward(h, W, b, tt, valid, n, m, s, chunks, shifted, kept)
        return (nll * valid).sum().astype(h.dtype) / n.astype(h.dtype)

    @staticmethod
    def backward(ctx, dout):
        # loss = mean_valid(logsumexp(z) - z_t)  =>  dz = (softmax(z) - onehot(t)) * dloss / n, 0 on ignored rows;
        # softmax(z) = e / s, so the normalisation and the scaling are one pass over the chunk; then as the reference:
        # dh = dz W, dW = sum over chunks of dz^T h, db = sum of dz's rows
        h, W, b, tt, valid, n, m, s, chunks, shifted, kept = ctx.saved
        xp = backend.xp()
        needs = ctx.needs_input_grad[:3]
        g = (valid * (dout / n)).astype(h.dtype)                     # (N,) dloss / n per row, 0 if ignored
        grads = [xp.empty_like(h) if needs[0] else None, None, None]
        for c, shift in zip(chunks, shifted, strict=True):
            if kept is not None:
                dz = kept                                            # the one chunk's e, kept by the forward
            else:
                dz = chunk_logits(h, W, b, c)                        # (rows, V) the logits again, then in place:
                if shift:
                    dz -= m[c, None]
                xp.exp(dz, out=dz)                                   # e, as the forward formed it
            dz *= g[c, None] / s[c, None]                            # e * (g / s) = softmax(z) * g
            dz[xp.arange(dz.shape[0]), tt[c]] -= g[c]                # - onehot(t) * g
            add_chunk_grads(grads, needs, dz, h, W, c)
        return (*grads, None)
