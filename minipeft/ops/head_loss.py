"""The LM head and the cross-entropy as one op, a chunk of rows at a time: the (N, V) logits never exist whole.

    loss = mean over non-ignored rows i of  logsumexp(z_i) - z_i[t_i],   z = h W^T + b   (h (N, C), W (V, C))

The logits are the largest array of a training step: 8 sequences x 256 tokens x SmolLM2's 49,152-token vocabulary
are 403 MB in float32, and their gradient as much again. Here the rows go through in chunks: a chunk's logits are
formed, reduced to each row's logsumexp and target logit, and dropped. All the forward keeps for the backward is
the logsumexp of each row (N numbers); the backward forms each chunk's logits again (one more (rows, C) x (C, V)
product per chunk: the price of never holding more than one (rows, V) block) and turns them into their gradient
in place. As in `linear`, a frozen W (the PEFT case) costs no dW product.

How many rows a chunk takes: as many as fit CHUNK_BYTES (rows x V x itemsize), or `chunk_rows` when given. When
all N rows fit one chunk, every number is the one `cross_entropy(linear(h, W, b), t)` computes, bit for bit: the
same products and reductions in the same order (the tests check it).
"""

from __future__ import annotations

import numbers

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm
from minipeft.ops.fastpath import pick
from minipeft.ops.loss import check_targets

# The most bytes one chunk of logits may take. 32 MiB: the mini GPT's batches (8 x 256 tokens, a 2,048-token
# vocabulary: 16 MiB in float32, 32 MiB in float64) are one chunk, computed exactly as the unchunked loss; SmolLM2's
# 49,152-token head gets 170 rows a chunk in float32. The backward holds one such block at a time.
CHUNK_BYTES = 32 * 2**20


def rows_per_chunk(V: int, itemsize: int, chunk_rows: int | None = None) -> int:
    """Rows of logits in one chunk: `chunk_rows` if given, else as many as fit CHUNK_BYTES (at least one)."""
    if chunk_rows is None:
        return max(1, CHUNK_BYTES // (V * itemsize))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral) or chunk_rows < 1:
        raise ValueError(f"linear_cross_entropy: chunk_rows must be None (chosen by CHUNK_BYTES) or an int >= 1, "
                         f"got {chunk_rows!r}")
    return int(chunk_rows)


def check_head_args(h, W, b, targets, ignore_index: int, chunk_rows: int | None):
    """Raise on bad shapes or dtypes; return (valid (N,), n (0-d), targets (N,), the row slices of the chunks)."""
    check_float("linear_cross_entropy", "h", h)
    if h.ndim != 2 or W.ndim != 2 or h.shape[1] != W.shape[1] or (b is not None and b.shape != (W.shape[0],)):
        bs = None if b is None else b.shape
        raise ValueError(f"linear_cross_entropy: h {h.shape}, W {W.shape}, b {bs} do not fit; need h (N, C), "
                         "W (V, C), b (V,) (flatten the batch and time axes of h first)")
    check_same_dtype("linear_cross_entropy", h=h, W=W, b=b)
    if targets.shape != h.shape[:1]:
        raise ValueError(f"linear_cross_entropy: h {h.shape} needs targets of shape {h.shape[:1]}, got "
                         f"{targets.shape}")
    N, V = h.shape[0], W.shape[0]
    rows = rows_per_chunk(V, h.dtype.itemsize, chunk_rows)
    return (*check_targets(targets, V, ignore_index, "linear_cross_entropy"),
            [slice(i, i + rows) for i in range(0, N, rows)])


def chunk_logits(h, W, b, c: slice):
    """z = h[c] W^T + b, the logits of one chunk of rows (rows, V): the same product as LinearFn's forward."""
    z = mm(h[c], W.T)
    if b is not None:
        z += b
    return z


def add_chunk_grads(grads: list, needs, dz, h, W, c: slice) -> None:
    """Add one chunk's share to [dh, dW, db], as LinearFn's backward: dh = dz W, dW = dz^T h, db = sum_rows dz.

    dh's rows are the chunk's own; dW and db add up over the chunks. A gradient that is not needed is not formed:
    a frozen head (the PEFT case) spends no (V, rows) x (rows, C) product."""
    if needs[0]:
        grads[0][c] = mm(dz, W)
    if needs[1]:
        dW = mm(dz.T, h[c])                                       # (V, C)
        if grads[1] is None:
            grads[1] = dW                                         # the first chunk's share (all of it if N fits)
        else:
            grads[1] += dW
    if needs[2]:
        db = dz.sum(axis=0)                                       # (V,)
        if grads[2] is None:
            grads[2] = db
        else:
            grads[2] += db


class LinearCrossEntropyFn(Function):
    """mean over non-ignored targets of -log softmax(h W^T + b)[target], the logits formed a chunk of rows at a time."""

    @staticmethod
    def forward(ctx, h, W, b, targets, ignore_index=-100, chunk_rows=None):
        xp = backend.xp()
        valid, n, tt, chunks = check_head_args(h, W, b, targets, ignore_index, chunk_rows)
        lse = xp.empty(h.shape[0], dtype=h.dtype)                 # (N,) logsumexp of each row: all the backward keeps
        nll = xp.empty(h.shape[0], dtype=h.dtype)                 # (N,) -log p[target]
        for c in chunks:
            z = chunk_logits(h, W, b, c)                          # (rows, V): only this chunk's logits exist
            z_target = z[xp.arange(z.shape[0]), tt[c]]            # (rows,) taken before z is overwritten
            m = z.max(axis=1, keepdims=True)                      # (rows, 1) row max: exp(z - m) <= 1, no overflow
            z -= m
            xp.exp(z, out=z)                                      # exp(z - m), in place: one (rows, V) buffer
            lse[c] = (m + xp.log(z.sum(axis=1, keepdims=True)))[:, 0]
            nll[c] = lse[c] - z_target                            # logsumexp(z) - z[target]
        ctx.save_for_backward(h, W, b, tt, valid, n, lse, chunks)
        return (nll * valid).sum().astype(h.dtype) / n.astype(h.dtype)

    @staticmethod
    def backward(ctx, dout):
        # forward was loss = sum over valid rows of (logsumexp(z) - z[t]) / n with z = h W^T + b, and
        # d logsumexp(z)/dz = softmax(z) = exp(z - logsumexp(z)), so per chunk of rows
        #   dz = (softmax(z) - onehot(t)) * dloss / n on valid rows, 0 on ignored ones,
        # and through z = h W^T + b:  dh = dz W,  dW = sum over chunks of dz^T h,  db = sum over all rows of dz
        h, W, b, tt, valid, n, lse, chunks = ctx.saved
        xp = backend.xp()
        needs = ctx.needs_input_grad[:3]
        g = (valid * (dout / n)).astype(h.dtype)                  # (N,) dloss / n, 0 on ignored rows
        grads = [xp.empty_like(h) if needs[0] else None, None, None]
        for c in chunks:
            dz = chunk_logits(h, W, b, c)                         # (rows, V) the logits again, then in place:
            dz -= lse[c, None]
            xp.exp(dz, out=dz)                                    # softmax(z) = exp(z - logsumexp(z))
            dz *= g[c, None]                                      # softmax(z) * g: one (rows, V) buffer throughout
            dz[xp.arange(dz.shape[0]), tt[c]] -= g[c]             # - onehot(t) * g
            add_chunk_grads(grads, needs, dz, h, W, c)
        return (*grads, None)


def linear_cross_entropy(h: Tensor, W: Tensor, targets, bias: Tensor | None = None, ignore_index: int = -100,
                         chunk_rows: int | None = None) -> Tensor:
    """cross_entropy(linear(h, W, bias), targets) without forming the (N, V) logits: chunks of rows (see module).

    h (N, C) hidden states, W (V, C) the head's weight (a tied embedding or lm_head.weight), targets (N,) class ids
    (ignore_index: no loss there). chunk_rows: rows per chunk, by default as many as fit CHUNK_BYTES."""
    t = targets.data if isinstance(targets, Tensor) else backend.xp().asarray(targets)
    return pick(LinearCrossEntropyFn).apply(h, W, bias, Tensor(t), ignore_index=ignore_index, chunk_rows=chunk_rows)
