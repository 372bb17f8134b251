"""Causal multi-head scaled-dot-product attention as one op, forward and backward written out.

Per head, with queries Q (Tq, hs) and keys, values K, V (Tk, hs):

    S = Q K^T / sqrt(hs) + mask      scores; mask is -inf where a query may not look
    P = softmax(S)                   over the keys, row by row
    O = P V                          each output a weighted average of value rows

The queries are the LAST Tq of the Tk positions, so query i sits at position Tk - Tq + i and, when causal,
sees keys 0..Tk-Tq+i. With Tq == Tk that is training's triangle; with Tq < Tk it is KV-cached decoding (the
keys of earlier tokens are kept) or a prefix of extra keys and values in front of the sequence.

The fast path (causal blocks, shift-free softmax) is ops/fast/attention.py; tests check both equal.
"""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, mm
from minipeft.ops.fastpath import pick
from minipeft.ops.nn import softmax_array


def check_attention_args(q, k, v, n_head: int, causal: bool) -> None:
    """Raise with a message naming the problem if q, k, v do not fit (B, Tq, C), (B, Tk, C), (B, Tk, C)."""
    if q.ndim != 3 or k.shape != v.shape or k.ndim != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} must be (B, Tq, C), (B, Tk, C), "
                         f"(B, Tk, C)")
    if q.shape[2] % n_head:
        raise ValueError(f"attention: C={q.shape[2]} is not divisible by n_head={n_head}")
    if causal and k.shape[1] < q.shape[1]:
        raise ValueError(f"attention: causal attention needs Tk >= Tq, got Tq={q.shape[1]}, Tk={k.shape[1]}")
    check_same_dtype("attention", q=q, k=k, v=v)


def split_heads(x, H: int):
    """(B, T, C) -> (B, H, T, hs): head h takes channels h*hs .. (h+1)*hs - 1."""
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, hs) -> (B, T, C), the inverse of split_heads."""
    B, H, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hs)


class AttentionFn(Function):
    """out = softmax(q k^T / sqrt(hs) + causal mask) v, per head; q (B, Tq, C), k and v (B, Tk, C)."""

    @staticmethod
    def forward(ctx, q, k, v, n_head=1, causal=True):
        check_attention_args(q, k, v, n_head, causal)
        xp = backend.xp()
        Tq, Tk = q.shape[1], k.shape[1]
        hs = q.shape[2] // n_head
        qh, kh, vh = (split_heads(a, n_head) for a in (q, k, v))  # (B, H, Tq, hs), (B, H, Tk, hs) x 2
        S = mm(qh, kh.swapaxes(-1, -2)) / math.sqrt(hs)           # (B, H, Tq, Tk) scores
        if causal:
            future = xp.triu(xp.ones((Tq, Tk), dtype=bool), Tk - Tq + 1)  # (Tq, Tk): key j > Tk - Tq + i
            S = xp.where(future, S.dtype.type(-xp.inf), S)        # exp(-inf) = 0: no weight on the future
        P = softmax_array(S, axis=-1)                             # (B, H, Tq, Tk), rows sum to 1
        O = mm(P, vh)                                             # (B, H, Tq, hs)
        ctx.save_for_backward(qh, kh, vh, P, hs)
        return merge_heads(O)                                     # (B, Tq, C)

    @staticmethod
    def backward(ctx, dout):
        # forward was O = P V, P = softmax(S), S = Q K^T / sqrt(hs), so
        #   dV = P^T dO                        (O is linear in V)
        #   dP = dO V^T                        (O is linear in P)
        #   dS = P * (dP - D),  D = rowsum(dP * P) = rowsum(dO * O)   (softmax's Jacobian, row by row; masked
        #                                      entries have P = 0; the fast path uses the (T, hs) form of D)
        #   dQ = dS K / sqrt(hs),  dK = dS^T Q / sqrt(hs)
        qh, kh, vh, P, hs = ctx.saved
        nq, nk, nv = ctx.needs_input_grad
        dO = split_heads(dout, qh.shape[1])                       # (B, H, Tq, hs)
        dq = dk = dv = None
        if nv:
            dv = merge_heads(mm(P.swapaxes(-1, -2), dO))          # (B, Tk, C)
        if nq or nk:
            dP = mm(dO, vh.swapaxes(-1, -2))                      # (B, H, Tq, Tk)
            dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # (B, H, Tq, Tk)
            if nq:
                dq = merge_heads(mm(dS, kh) / math.sqrt(hs))      # (B, Tq, C)
            if nk:
                dk = merge_heads(mm(dS.swapaxes(-1, -2), qh) / math.sqrt(hs))  # (B, Tk, C)
        return dq, dk, dv


def attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, causal: bool = True) -> Tensor:
    """Multi-head scaled-dot-product attention on (B, T, C) inputs, heads split inside."""
    return pick(AttentionFn).apply(q, k, v, n_head=n_head, causal=causal)
