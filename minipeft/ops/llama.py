"""The Llama block's own ops: RMSNorm, SiLU and SwiGLU, each a forward with its backward.

Llama (Touvron et al., 2023) and the models built like it (SmolLM2, Mistral, Qwen) change GPT-2's block in
two places. The norm drops the mean: RMSNorm (Zhang & Sennrich, 2019) only rescales,

    y = x / rms(x) * w,   rms(x) = sqrt(mean(x^2) + eps)    (no shift, no bias)

and the MLP is gated (SwiGLU; Shazeer, 2020): down(silu(gate(x)) * up(x)), silu(a) = a * sigmoid(a).
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype


def sigmoid_array(a):
    """sigmoid(a) = 1 / (1 + exp(-a)) = 0.5 + 0.5 tanh(a / 2): the tanh form cannot overflow (exp(-a) can for
    a < -88 in float32) and takes one transcendental pass. Its error is absolute (an ulp of 0.5), not relative,
    so sigmoid(-30) ~ 1e-13 carries a relative error of ~1e-3: nothing next to activations of order 1."""
    half = a.dtype.type(0.5)
    return half + half * backend.xp().tanh(half * a)


class RMSNormFn(Function):
    """y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps) over the last axis, as one op."""

    @staticmethod
    def forward(ctx, x, w, eps=1e-5):
        check_float("rms_norm", "x", x)
        if w is not None and w.shape != (x.shape[-1],):
            raise ValueError(f"rms_norm: x {x.shape} needs a weight of shape ({x.shape[-1]},), got {w.shape}")
        check_same_dtype("rms_norm", x=x, weight=w)
        rstd = 1.0 / backend.xp().sqrt((x * x).mean(axis=-1, keepdims=True) + eps)   # (..., 1)
        xhat = x * rstd                                        # (..., C), mean square 1
        ctx.save_for_backward(xhat, rstd, w)
        return xhat if w is None else xhat * w

    @staticmethod
    def backward(ctx, dout):
        # forward was y = xhat * w, xhat = x * rstd, rstd = (mean(x^2) + eps)^(-1/2), so
        #   dw = sum over rows of dy * xhat,  dxhat = dy * w
        # and, since d rstd / dx = -rstd^3 x / C = -rstd^2 xhat / C,
        #   dx = rstd * (dxhat - xhat * mean(dxhat * xhat))      (layer norm's formula without the mean term)
        xhat, rstd, w = ctx.saved
        nx, nw = ctx.needs_input_grad
        rows = tuple(range(dout.ndim - 1))
        dw = (dout * xhat).sum(axis=rows) if nw else None      # (C,)
        dx = None
        if nx:
            dxhat = dout if w is None else dout * w            # (..., C)
            dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, dw


class SiLUFn(Function):
    """silu(a) = a * sigmoid(a) (also called swish), elementwise."""

    @staticmethod
    def forward(ctx, a):
        check_float("silu", "a", a)
        s = sigmoid_array(a)
        ctx.save_for_backward(a, s)
        return a * s

    @staticmethod
    def backward(ctx, dout):
        # y = a s, s = sigmoid(a), ds/da = s (1 - s)  =>  dy/da = s + a s (1 - s) = s (1 + a (1 - s))
        a, s = ctx.saved
        return (dout * s * (1 + a * (1 - s)),)


class SwiGLUFn(Function):
    """h = silu(g) * u, elementwise: the gate of Llama's MLP, g = gate_proj(x), u = up_proj(x), as one op."""

    @staticmethod
    def forward(ctx, g, u):
        check_float("swiglu", "gate", g)
        if g.shape != u.shape:
            raise ValueError(f"swiglu: gate {g.shape} and up {u.shape} must have the same shape")
        check_same_dtype("swiglu", gate=g, up=u)
        s = sigmoid_array(g)
        ctx.save_for_backward(g, u, s)
        return g * s * u

    @staticmethod
    def backward(ctx, dout):
        # h = silu(g) u  =>  du = dh * silu(g),  dg = dh * u * silu'(g),  silu'(g) = s (1 + g (1 - s))
        g, u, s = ctx.saved
        ng, nu = ctx.needs_input_grad
        dg = dout * u * (s * (1 + g * (1 - s))) if ng else None
        du = dout * (g * s) if nu else None
        return dg, du


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Rescale the last axis to unit root-mean-square, then scale by weight (RMSNorm)."""
    return RMSNormFn.apply(x, weight, eps=eps)


def silu(a: Tensor) -> Tensor:
    """a * sigmoid(a)."""
    return SiLUFn.apply(a)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, the gated activation of Llama's MLP."""
    return SwiGLUFn.apply(gate, up)
