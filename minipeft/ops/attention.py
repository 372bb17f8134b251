"""Causal multi-head scaled-dot-product attention as one fused op (forward + explicit backward)."""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype, mm


def _heads(x, H: int):
    """(B, T, C) -> (B, H, T, hs), C-contiguous: numpy's batched matmul is several times slower on strided views"""
    B, T, C = x.shape
    return backend.xp().ascontiguousarray(x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3))


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
        B, _, C = q.shape
        hs = C // n_head
        qs = _heads(q, n_head) * q.dtype.type(1.0 / math.sqrt(hs))      # (B, H, Tq, hs), pre-scaled
        kT = xp.ascontiguousarray(k.reshape(B, Tk, n_head, hs).transpose(0, 2, 3, 1))  # (B, H, hs, Tk)
        vh = _heads(v, n_head)                                          # (B, H, Tk, hs)
        P = mm(qs, kT)                                                  # (B, H, Tq, Tk) scores S
        if causal and Tq > 1:
            # query i sits at absolute position Tk - Tq + i and may see keys j <= that position
            future = xp.arange(Tk)[None, :] > (xp.arange(Tq)[:, None] + (Tk - Tq))
            xp.copyto(P, q.dtype.type(-xp.inf), where=future)
        P -= P.max(axis=-1, keepdims=True)                              # softmax, in place
        xp.exp(P, out=P)
        P /= P.sum(axis=-1, keepdims=True)
        ctx.save_for_backward(qs, kT, vh, P, hs)
        return _merge(mm(P, vh))                                        # (B, Tq, C)

    @staticmethod
    def backward(ctx, dout):
        # O = P V, P = softmax(S), S = Qs K^T with Qs = Q / sqrt(hs)
        # => dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dP * P));  dQ = dS K / sqrt(hs);  dK = dS^T Qs
        qs, kT, vh, P, hs = ctx.saved
        nq, nk, nv = ctx.needs_input_grad
        dO = _heads(dout, qs.shape[1])                                  # (B, H, Tq, hs)
        dv = _merge(mm(P.swapaxes(-1, -2), dO)) if nv else None
        dq = dk = None
        if nq or nk:
            dS = mm(dO, vh.swapaxes(-1, -2))                            # dP, (B, H, Tq, Tk)
            dS -= (dS * P).sum(axis=-1, keepdims=True)
            dS *= P                                                     # now dS
            dq = _merge(mm(dS, kT.swapaxes(-1, -2)) * dS.dtype.type(1.0 / math.sqrt(hs))) if nq else None
            dk = _merge(mm(dS.swapaxes(-1, -2), qs)) if nk else None
        return dq, dk, dv


def attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, causal: bool = True) -> Tensor:
    """Multi-head scaled-dot-product attention on (B, T, C) inputs, heads split inside."""
    return Attention.apply(q, k, v, n_head=n_head, causal=causal)
