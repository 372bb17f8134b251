"""Causal multi-head scaled-dot-product attention as one fused op (forward + explicit backward)."""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, mm
from minipeft.ops.nn import softmax_array


def _heads(x, H: int):
    """(B, T, C) -> (B, H, T, hs)"""
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def _merge(x):
    """(B, H, T, hs) -> (B, T, C), C-contiguous"""
    B, H, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hs)


class Attention(Function):
    """out = softmax(q k^T / sqrt(hs) + causal mask) v, per head.

    q is (B, Tq, C); k and v are (B, Tk, C) with Tk >= Tq: the queries are the last Tq
    positions, so the same op serves training (Tq == Tk) and KV-cached decoding (Tq < Tk).
    """

    @staticmethod
    def forward(ctx, q, k, v, n_head=1, causal=True):
        if q.ndim != 3 or k.shape != v.shape or k.ndim != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} must be (B, Tq, C), (B, Tk, C), "
                             f"(B, Tk, C)")
        if q.shape[2] % n_head:
            raise ValueError(f"attention: C={q.shape[2]} is not divisible by n_head={n_head}")
        Tq, Tk = q.shape[1], k.shape[1]
        if causal and Tk < Tq:
            raise ValueError(f"attention: causal attention needs Tk >= Tq, got Tq={Tq}, Tk={Tk}")
        check_same_dtype("attention", q=q, k=k, v=v)
        xp = backend.xp()
        scale = 1.0 / math.sqrt(q.shape[2] // n_head)
        qh, kh, vh = _heads(q, n_head), _heads(k, n_head), _heads(v, n_head)
        S = mm(qh, kh.swapaxes(-1, -2)) * q.dtype.type(scale)        # (B, H, Tq, Tk)
        if causal and Tq > 1:
            # query i sits at absolute position Tk - Tq + i and may see keys j <= that position
            future = xp.arange(Tk)[None, :] > (xp.arange(Tq)[:, None] + (Tk - Tq))
            S = xp.where(future, q.dtype.type(-xp.inf), S)
        P = softmax_array(S, axis=-1)                                 # (B, H, Tq, Tk)
        ctx.save_for_backward(qh, kh, vh, P, scale)
        return _merge(mm(P, vh))                                      # (B, Tq, C)

    @staticmethod
    def backward(ctx, dout):
        # O = P V, P = softmax(S), S = Q K^T * scale
        # => dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dP * P));  dQ = dS K * scale;  dK = dS^T Q * scale
        qh, kh, vh, P, scale = ctx.saved
        nq, nk, nv = ctx.needs_input_grad
        dO = _heads(dout, qh.shape[1])                                # (B, H, Tq, hs)
        dv = _merge(mm(P.swapaxes(-1, -2), dO)) if nv else None
        dq = dk = None
        if nq or nk:
            dP = mm(dO, vh.swapaxes(-1, -2))                          # (B, H, Tq, Tk)
            dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
            dS *= dS.dtype.type(scale)
            dq = _merge(mm(dS, kh)) if nq else None
            dk = _merge(mm(dS.swapaxes(-1, -2), qh)) if nk else None
        return dq, dk, dv


def attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, causal: bool = True) -> Tensor:
    """Multi-head scaled-dot-product attention on (B, T, C) inputs, heads split inside."""
    return Attention.apply(q, k, v, n_head=n_head, causal=causal)
