"""Fast path of attention: causal query blocks, a shift-free softmax when provably safe, contiguous copies.

Same numbers as `multihead_attention.AttentionFn` (tested equal); read that one first. The tricks:

- Causal attention lets query i see keys 0..i only, so half of the (T x T) score matrix is masked out.
  Computing it and then throwing it away costs half the attention matmuls and half the softmax passes.
  The queries go in blocks of `block_size` rows; a block needs only the keys up to its last query, so
  the work above the diagonal is skipped (the idea FlashAttention's causal kernels use). With T = 256
  and blocks of 32, the op touches 36/64 of the full score matrix.
- K^T and V^T are C-contiguous copies for the score and dP products (numpy's batched matmul runs slower
  on strided views, slowest on a transposed one).
- softmax's 1/rowsum multiplies the (n, hs) output block instead of the (n, e) probabilities, and the row
  sums are a matrix-vector product (numpy's row reductions are slow on short rows).
- The max shift is skipped when `score_bound` proves it unneeded (`_shared.SHIFT_FREE_BOUND`); not on the GPU,
  where reading the bound back would stall the device once per call.

Measured speed-ups: BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function
from minipeft.ops._util import mm
from minipeft.ops.fastpath import fast_path_of
from minipeft.ops.multihead_attention import AttentionFn, check_attention_args
from minipeft.workshop.fast._shared import SHIFT_FREE_BOUND

BLOCK_SIZE = 32  # query rows per block (the fastest at T = 256 of those measured)


def _heads(x, H: int, scale=None):
    """(B, T, C) -> (B, H, T, hs), C-contiguous, times scale.

    Contiguous copies because numpy's batched matmul runs slower on strided views, and slowest on a
    transposed one. K^T is made from K's heads (`_transposed`), which beat one (B, T, C) -> (B, H, hs, T)
    copy."""
    B, T, C = x.shape
    view = x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)
    out = backend.xp().empty(view.shape, dtype=x.dtype)
    if scale is None:
        out[...] = view
        return out
    return backend.xp().multiply(view, x.dtype.type(scale), out=out)


def _transposed(x):
    """(..., T, hs) -> (..., hs, T), C-contiguous."""
    return backend.xp().ascontiguousarray(x.swapaxes(-1, -2))


def _merge(x, scale=None):
    """(B, H, T, hs) -> (B, T, C), C-contiguous, times scale (the copy and the scaling in one pass)"""
    B, H, T, hs = x.shape
    if scale is None:
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * hs)
    out = backend.xp().empty((B, T, H, hs), dtype=x.dtype)
    backend.xp().multiply(x.transpose(0, 2, 1, 3), x.dtype.type(scale), out=out)
    return out.reshape(B, T, H * hs)


def _blocks(Tq: int, Tk: int, causal: bool, block_size: int):
    """(i0, i1, e): query rows i0..i1-1 attend to keys 0..e-1 (all Tk keys when not causal)."""
    if not causal:
        return [(0, Tq, Tk)]
    off = Tk - Tq  # query i sits at absolute position off + i
    return [(i0, min(Tq, i0 + block_size), off + min(Tq, i0 + block_size)) for i0 in range(0, Tq, block_size)]


def score_bound(qs, kh) -> float:
    """A bound on every |score| q_i . k_j of one call, from Cauchy-Schwarz: |q_i . k_j| <= |q_i| |k_j|.

    qs (B, H, Tq, hs), kh (B, H, Tk, hs); the largest over (b, h) of max_i |q_i| * max_j |k_j|. Costs two
    (T, hs) passes, where the exact row max it stands in for costs a pass over the (T, T) scores.
    """
    xp = backend.xp()
    q2 = xp.einsum("bhtd,bhtd->bht", qs, qs).max(axis=-1)              # (B, H) max_i |q_i|^2
    k2 = xp.einsum("bhtd,bhtd->bht", kh, kh).max(axis=-1)              # (B, H) max_j |k_j|^2
    return math.sqrt(float((q2 * k2).max()))


@fast_path_of(AttentionFn)
class BlockedAttentionFn(Function):
    """AttentionFn's numbers, computed in causal query blocks with an unnormalised softmax."""

    @staticmethod
    def forward(ctx, q, k, v, n_head=1, causal=True, block_size=BLOCK_SIZE):
        check_attention_args(q, k, v, n_head, causal)
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"attention: block_size must be a positive int, got {block_size!r}")
        Tq, Tk = q.shape[1], k.shape[1]
        xp = backend.xp()
        hs = q.shape[2] // n_head
        qs = _heads(q, n_head, 1.0 / math.sqrt(hs))                     # (B, H, Tq, hs), pre-scaled
        kh = _heads(k, n_head)                                          # (B, H, Tk, hs)
        kT = _transposed(kh)                                            # (B, H, hs, Tk): K^T, C-contiguous
        vh = _heads(v, n_head)                                          # (B, H, Tk, hs)
        out = xp.empty_like(qs)
        Ps, rinvs = [], []
        blocks = _blocks(Tq, Tk, causal, block_size)
        nb = min(block_size, Tq)
        future = xp.triu(xp.ones((nb, nb), dtype=bool), 1) if causal else None  # strictly above the diagonal
        # softmax(s) = exp(s - c) / sum exp(s - c) for any row constant c; c = row max only guards exp's range,
        # so it is skipped when the scores provably lie within +-SHIFT_FREE_BOUND (NaN or inf fails the test)
        # (on the GPU reading the bound back would be a sync per call: there the shift is always done)
        shift = Tq * Tk > 0 and (backend.is_gpu() or not score_bound(qs, kh) <= SHIFT_FREE_BOUND)
        for i0, i1, e in blocks:
            P = mm(qs[:, :, i0:i1], kT[..., :e])                        # (B, H, n, e) scores S, n = i1 - i0
            if causal:
                # query i0 + a (absolute position Tk - Tq + i0 + a) may see keys j <= that position:
                # only the block's last n key columns can lie in its future, in their strict upper triangle
                n = i1 - i0
                xp.copyto(P[..., e - n:], q.dtype.type(-xp.inf), where=future[:n, :n])
            if shift:
                P -= P.max(axis=-1, keepdims=True)                      # softmax numerator, in place
            xp.exp(P, out=P)
            rinv = (P @ xp.ones(e, dtype=P.dtype))[..., None]           # row sums as a matrix-vector product
            #   (a reduction, so not logged by mm)
            xp.reciprocal(rinv, out=rinv)                               # (B, H, n, 1)
            # the 1/rowsum goes on the (n, hs) output, not on the (n, e) probabilities: P stays unnormalised
            xp.multiply(mm(P, vh[:, :, :e]), rinv, out=out[:, :, i0:i1])
            Ps.append(P)
            rinvs.append(rinv)
        ctx.save_for_backward(qs, kh, vh, Ps, rinvs, out, blocks, hs)
        return _merge(out)                                              # (B, Tq, C)

    @staticmethod
    def backward(ctx, dout):
        # Per block: O = P V, P = softmax(S), S = Qs K^T with Qs = Q / sqrt(hs)
        # => dV = P^T dO;  dP = dO V^T;  dS = P * (dP - D);  dQ = dS K / sqrt(hs);  dK = dS^T Qs
        # with D_i = sum_j P_ij dP_ij = sum_j P_ij (dO_i . V_j) = dO_i . O_i, one (T, hs) reduction
        # instead of a (T, T) one (FlashAttention's identity).
        # Forward kept E = exp(S - c), unnormalised (c = row max, or 0 when the scores are bounded), and
        # r = 1/rowsum(E), so P = r * E (r per row).
        # Scaling the small (n, hs) dO block by r puts the normalisation back at no (n, e) pass:
        #   dV = E^T (r dO);  dS = E * ((r dO) V^T - r D)
        # A key is seen by several query blocks, so dK and dV sum the blocks' contributions.
        qs, kh, vh, Ps, rinvs, out, blocks, hs = ctx.saved
        nq, nk, nv = ctx.needs_input_grad
        xp = backend.xp()
        dO = _heads(dout, qs.shape[1])                                  # (B, H, Tq, hs)
        dq = xp.empty_like(qs) if nq else None
        dk = xp.zeros_like(vh) if nk else None                          # K's shape (B, H, Tk, hs), as V's
        dv = xp.zeros_like(vh) if nv else None
        if nq or nk:
            D = xp.einsum("bhtd,bhtd->bht", dO, out)[..., None]         # (B, H, Tq, 1)
            vT = _transposed(vh)                                        # (B, H, hs, Tk): V^T, C-contiguous
        for E, rinv, (i0, i1, e) in zip(Ps, rinvs, blocks, strict=True):
            dOr = dO[:, :, i0:i1] * rinv                                # (B, H, n, hs) r dO
            if nv:
                dv[:, :, :e] += mm(E.swapaxes(-1, -2), dOr)
            if nq or nk:
                dS = mm(dOr, vT[..., :e])                               # r dP, (B, H, n, e)
                dS -= D[:, :, i0:i1] * rinv
                dS *= E                                                 # now dS
                if nq:
                    dq[:, :, i0:i1] = mm(dS, kh[:, :, :e])
                if nk:
                    dk[:, :, :e] += mm(dS.swapaxes(-1, -2), qs[:, :, i0:i1])
        return (_merge(dq, 1.0 / math.sqrt(hs)) if nq else None, _merge(dk) if nk else None, _merge(dv) if nv else None)
