"""Rotary position embedding (RoPE; Su et al., 2021), as one op with its backward.

Instead of adding a learned position vector to each token, RoPE turns each head's query and key by an
angle proportional to the token's position. Per head of size hs, channel pairs (i, i + hs/2) form 2-D
points, and the pair i at position p turns by p * theta_i, theta_i = base^(-2i / hs):

    y_i        = x_i cos(p theta_i) - x_{i+hs/2} sin(p theta_i)
    y_{i+hs/2} = x_i sin(p theta_i) + x_{i+hs/2} cos(p theta_i)

A query at position m and a key at position n then meet as (R(m) q)^T (R(n) k) = q^T R(n - m) k: the score
depends on the offset n - m only, so "the token just before me" is the same pattern everywhere. That
makes the look-back-and-copy heads a model needs for reading its context much easier to learn than with
a learned position table (measured for this project in BENCHMARKS.md, "The base model: pretraining recipe and length").
This is GPT-NeoX's / Llama's "rotate half" layout.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float


def rotary_angles(positions, hs: int, base: float, dtype):
    """cos and sin of p * theta_i, each (T, hs/2), for the given integer positions (T,)."""
    xp = backend.xp()
    theta = base ** (-xp.arange(0, hs // 2, dtype=xp.float64) * 2 / hs)      # (hs/2,)
    angle = xp.asarray(positions, dtype=xp.float64)[:, None] * theta[None, :]  # (T, hs/2), in float64
    return xp.cos(angle).astype(dtype), xp.sin(angle).astype(dtype)


def _rotate(x, cos, sin, n_head: int):
    """Turn each head's channel pairs (i, i + hs/2) of x (B, T, C) by the angles (T, hs/2)."""
    B, T, C = x.shape
    xh = x.reshape(B, T, n_head, C // n_head)                 # (B, T, H, hs)
    half = xh.shape[-1] // 2
    x1, x2 = xh[..., :half], xh[..., half:]                   # (B, T, H, hs/2) each
    c, s = cos[None, :, None, :], sin[None, :, None, :]       # (1, T, 1, hs/2)
    y = backend.xp().concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)  # (B, T, H, hs)
    return y.reshape(B, T, C)


class RotaryFn(Function):
    """y = x turned per head by R(p), the rotation of position p (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, positions=None, n_head=1, base=10000.0):
        check_float("rotary", "x", x)
        if x.ndim != 3 or x.shape[2] % n_head or (x.shape[2] // n_head) % 2:
            raise ValueError(f"rotary: x {x.shape} must be (B, T, C) with C divisible by n_head={n_head} into "
                             "heads of even size")
        n_pos = None if positions is None else len(positions)
        if n_pos != x.shape[1]:
            raise ValueError(f"rotary: need one position per time step, got {n_pos} for T={x.shape[1]}")
        cos, sin = rotary_angles(positions, x.shape[2] // n_head, base, x.dtype)
        ctx.save_for_backward(cos, sin, n_head)
        return _rotate(x, cos, sin, n_head)

    @staticmethod
    def backward(ctx, dout):
        # forward was y = R(p) x with R(p) a rotation, so dx = R(p)^T dy = R(-p) dy: the same turn backwards,
        # i.e. the same cos and the opposite sin
        cos, sin, n_head = ctx.saved
        return (_rotate(dout, cos, -sin, n_head),)


def rotary(x: Tensor, positions, n_head: int, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x (B, T, C), heads of C / n_head channels, at integer positions (T,)."""
    return RotaryFn.apply(x, positions=positions, n_head=n_head, base=base)
