"""Causal multi-head scaled-dot-product attention as one op, forward and backward written out.

Per head, with queries Q (Tq, hs) and keys, values K, V (Tk, hs):

    S = Q K^T / sqrt(hs) + mask      scores; mask is -inf where a query may not look
    P = softmax(S)                   over the keys, row by row
    O = P V                          each output a weighted average of value rows

The queries are the LAST Tq of the Tk positions, so query i sits at position Tk - Tq + i and, when causal,
sees keys 0..Tk-Tq+i. With Tq == Tk that is training's triangle; with Tq < Tk it is KV-cached decoding (the
keys of earlier tokens are kept) or a prefix of extra keys and values in front of the sequence.

Grouped-query attention (Ainslie et al., 2023; Llama 2 70B, SmolLM2) gives K and V fewer heads than Q:
n_kv_head key/value heads, each shared by a group of G = n_head / n_kv_head query heads (query head h uses
key/value head h // G, as transformers' `repeat_kv` orders them). Rather than copying K and V G times, the
G query heads of a group are stacked into one (G Tq, hs) block that meets its group's K and V in one
product; with G = 1 (n_kv_head = n_head) it is plain multi-head attention.

The fast path (causal blocks, shift-free softmax) is workshop/fast/attention.py, for n_kv_head = n_head; tests
check both equal.
"""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, mm
from minipeft.ops.fastpath import pick
from minipeft.ops.nn import softmax_array


def check_attention_args(q, k, v, n_head: int, causal: bool, n_kv_head: int | None = None) -> None:
    """Raise with a message naming the problem if q, k, v do not fit (B, Tq, C), (B, Tk, Ckv), (B, Tk, Ckv),
    Ckv = C / n_head * n_kv_head (Ckv = C without grouped-query attention)."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"attention: n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
    if q.shape[2] % n_head:
        raise ValueError(f"attention: C={q.shape[2]} is not divisible by n_head={n_head}")
    Ckv = q.shape[2] // n_head * n_kv_head
    if q.ndim != 3 or k.shape != v.shape or k.ndim != 3 or q.shape[0] != k.shape[0] or k.shape[2] != Ckv:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} must be (B, Tq, C), (B, Tk, Ckv), "
                         f"(B, Tk, Ckv) with Ckv = C / n_head * n_kv_head = {Ckv}")
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


def split_groups(q, n_kv_head: int, n_head: int):
    """(B, T, C) -> (B, Hkv, G T, hs): query head j G + g (group j's g-th) at rows g T .. g T + T - 1 of group j."""
    B, T, C = q.shape
    G = n_head // n_kv_head
    x = q.reshape(B, T, n_kv_head, G, C // n_head).transpose(0, 2, 3, 1, 4)   # (B, Hkv, G, T, hs)
    return x.reshape(B, n_kv_head, G * T, C // n_head)


def merge_groups(x, T: int):
    """(B, Hkv, G T, hs) -> (B, T, C), the inverse of split_groups."""
    B, Hkv, GT, hs = x.shape
    G = GT // T
    return x.reshape(B, Hkv, G, T, hs).transpose(0, 3, 1, 2, 4).reshape(B, T, Hkv * G * hs)


class AttentionFn(Function):
    """out = softmax(q k^T / sqrt(hs) + causal mask) v, per head; q (B, Tq, C), k and v (B, Tk, Ckv).

    Heads are handled as groups (see the module docstring): qh holds a group's G query heads as G Tq rows,
    so H below is n_kv_head and every product runs once per key/value head.
    """

    @staticmethod
    def forward(ctx, q, k, v, n_head=1, causal=True, n_kv_head=None):
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        check_attention_args(q, k, v, n_head, causal, n_kv_head)
        xp = backend.xp()
        Tq, Tk = q.shape[1], k.shape[1]
        hs = q.shape[2] // n_head
        # contiguous copies: NumPy's matmul falls back to a loop far slower than BLAS on these strided views
        qh = xp.ascontiguousarray(split_groups(q, n_kv_head, n_head))   # (B, H, G Tq, hs)
        kh = xp.ascontiguousarray(split_heads(k, n_kv_head))            # (B, H, Tk, hs)
        vh = xp.ascontiguousarray(split_heads(v, n_kv_head))
        S = mm(qh, kh.swapaxes(-1, -2)) / math.sqrt(hs)           # (B, H, G Tq, Tk) scores
        if causal:
            future = xp.triu(xp.ones((Tq, Tk), dtype=bool), Tk - Tq + 1)  # (Tq, Tk): key j > Tk - Tq + i
            future = xp.tile(future, (n_head // n_kv_head, 1))    # (G Tq, Tk): the same mask for each head
            S = xp.where(future, S.dtype.type(-xp.inf), S)        # exp(-inf) = 0: no weight on the future
        P = softmax_array(S, axis=-1)                             # (B, H, G Tq, Tk), rows sum to 1
        O = mm(P, vh)                                             # (B, H, G Tq, hs)
        ctx.save_for_backward(qh, kh, vh, P, hs, Tq)
        return merge_groups(O, Tq)                                # (B, Tq, C)

    @staticmethod
    def backward(ctx, dout):
        # forward was O = P V, P = softmax(S), S = Q K^T / sqrt(hs), so
        #   dV = P^T dO                        (O is linear in V)
        #   dP = dO V^T                        (O is linear in P)
        #   dS = P * (dP - D),  D = rowsum(dP * P) = rowsum(dO * O)   (softmax's Jacobian, row by row; masked
        #                                      entries have P = 0; the fast path uses the (T, hs) form of D)
        #   dQ = dS K / sqrt(hs),  dK = dS^T Q / sqrt(hs)
        # with a group's G query heads stacked as rows, dK = dS^T Q and dV = P^T dO sum over the group's
        # heads by themselves: a shared K and V get the sum of the gradients of every head that read them
        qh, kh, vh, P, hs, Tq = ctx.saved
        nq, nk, nv = ctx.needs_input_grad
        H, G = qh.shape[1], qh.shape[2] // Tq
        dO = backend.xp().ascontiguousarray(split_groups(dout, H, H * G))   # (B, H, G Tq, hs)
        dq = dk = dv = None
        if nv:
            dv = merge_heads(mm(P.swapaxes(-1, -2), dO))          # (B, Tk, Ckv)
        if nq or nk:
            dP = mm(dO, vh.swapaxes(-1, -2))                      # (B, H, G Tq, Tk)
            dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # (B, H, G Tq, Tk)
            if nq:
                dq = merge_groups(mm(dS, kh) / math.sqrt(hs), Tq)  # (B, Tq, C)
            if nk:
                dk = merge_heads(mm(dS.swapaxes(-1, -2), qh) / math.sqrt(hs))  # (B, Tk, Ckv)
        return dq, dk, dv


def attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, causal: bool = True, n_kv_head: int | None = None
              ) -> Tensor:
    """Multi-head scaled-dot-product attention on (B, T, C) inputs, heads split inside.

    n_kv_head < n_head is grouped-query attention: k and v are (B, Tk, C / n_head * n_kv_head)."""
    if n_kv_head is None or n_kv_head == n_head:
        return pick(AttentionFn).apply(q, k, v, n_head=n_head, causal=causal)
    return AttentionFn.apply(q, k, v, n_head=n_head, causal=causal, n_kv_head=n_kv_head)
