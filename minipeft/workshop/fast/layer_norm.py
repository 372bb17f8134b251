"""Fast path of layer norm: row means as matrix-vector products, sums of products as einsum.

Same numbers as `nn.LayerNormFn` (tested equal); read that one first. Row reductions over the short last
axis (C = 128 in the tutorials' model) are slow as numpy reductions, so the means are matrix-vector products
with a (C,) vector of 1/C, and the sums of products are einsum dot products (no (N, C) temporary). The
centred x becomes xhat in place, and the backward builds dx in place in the buffer that held dxhat.

Measured speed-ups: BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function
from minipeft.ops.fastpath import fast_path_of
from minipeft.ops.nn import LayerNormFn, check_layer_norm_args


@fast_path_of(LayerNormFn)
class MatVecLayerNormFn(Function):
    """LayerNormFn's numbers with matrix-vector means and einsum row dot products."""

    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        check_layer_norm_args(x, w, b)
        C = x.shape[-1]
        xp = backend.xp()
        x2 = x.reshape(-1, C)                                  # (N, C)
        avg = xp.full(C, 1.0 / C, dtype=x.dtype)               # x2 @ avg = row means
        xhat = x2 - (x2 @ avg)[:, None]                        # x - mean, becomes xhat in place
        var = xp.einsum("ij,ij->i", xhat, xhat)
        var *= x.dtype.type(1.0 / C)
        var += x.dtype.type(eps)
        rstd = (1.0 / xp.sqrt(var))[:, None]                   # (N, 1)
        xhat *= rstd
        ctx.save_for_backward(xhat, rstd, w, avg, x.shape)
        y = xhat.copy() if w is None else xhat * w
        if b is not None:
            y += b
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dout):
        # xhat = (x - mean) * rstd, y = xhat * w + b
        # => dxhat = dy * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        xhat, rstd, w, avg, shape = ctx.saved
        nx, nw, nb = ctx.needs_input_grad
        xp = backend.xp()
        dy = dout.reshape(xhat.shape)
        dw = xp.einsum("ij,ij->j", dy, xhat) if nw else None
        db = dy.sum(axis=0) if nb else None
        dx = None
        if nx:
            dx = dy.copy() if w is None else dy * w           # dxhat, becomes dx in place
            m2 = xp.einsum("ij,ij->i", dx, xhat)[:, None]
            m2 *= avg[0]                                       # mean(dxhat * xhat)
            t = xhat * m2
            t += (dx @ avg)[:, None]                           # + mean(dxhat)
            dx -= t
            dx *= rstd
            dx = dx.reshape(shape)
        return dx, dw, db
