"""Fast path of GELU: in-place passes over cache-sized chunks.

Same numbers as `elementwise.GELUFn` (tested equal); read that one first. The MLP's (N, 4C) activation is the
largest elementwise array in the model, and each temporary costs a full pass of memory traffic, so:

- the forward and backward are written as in-place passes into preallocated buffers;
- the forward saves p = 0.5 (1 + tanh u) (not tanh u), so the backward can use 1 - tanh^2 u = 4 p (1 - p):
  9 passes instead of 11;
- the passes run chunk by chunk (`_shared.chunks`), so a chunk stays in cache across its passes. Every element
  goes through the same float operations whatever the chunking, so the result is bit-identical to whole-array
  passes.

Measured speed-ups: BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function
from minipeft.ops.elementwise import GELU_A, GELU_C, GELUFn
from minipeft.ops.fastpath import fast_path_of
from minipeft.workshop.fast._shared import chunks


@fast_path_of(GELUFn)
class ChunkedGELUFn(Function):
    """GELUFn's numbers as x p, p = 0.5 (1 + tanh u), in in-place passes chunk by chunk."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.xp()
        c = x.dtype.type(GELU_C)
        a = x.dtype.type(GELU_A) * c
        half = x.dtype.type(0.5)
        xf = x.reshape(-1)                           # flat view (a copy only if x is not contiguous)
        p = xp.empty_like(xf)
        y = xp.empty_like(xf)
        for s in chunks(xf.size):
            xs, ps = xf[s], p[s]
            xp.multiply(xs, xs, out=ps)
            ps *= a
            ps += c
            ps *= xs                                 # u = c (x + 0.044715 x^3)
            xp.tanh(ps, out=ps)
            ps += 1
            ps *= half                               # p = 0.5 (1 + tanh u)
            xp.multiply(xs, ps, out=y[s])
        ctx.save_for_backward(xf, p, x.shape)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dout):
        # y = x p  =>  dy/dx = p + x dp/dx,  dp/dx = 0.5 (1 - tanh^2 u) u' = 2 p (1 - p) c (1 + 3 * 0.044715 x^2)
        #          =>  dy/dx = p + p (1 - p) x (2c + 6 * 0.044715 c x^2),  c = sqrt(2/pi)
        xp = backend.xp()
        xf, p, shape = ctx.saved
        c = xf.dtype.type(GELU_C)
        a6 = xf.dtype.type(6 * GELU_A) * c
        c2 = xf.dtype.type(2) * c
        df = dout.reshape(-1)
        g = xp.empty_like(xf)
        spans = chunks(xf.size)
        w = xp.empty_like(xf[spans[0]]) if spans else None  # one chunk-sized scratch buffer, reused
        for s in spans:
            xs, ps, gs = xf[s], p[s], g[s]
            ws = w[: xs.size]
            xp.multiply(xs, xs, out=ws)
            ws *= a6
            ws += c2
            ws *= xs                                 # x (2c + 6 * 0.044715 c x^2)
            xp.subtract(1, ps, out=gs)
            gs *= ps                                 # p (1 - p)
            gs *= ws
            gs += ps
            gs *= df[s]
        return (g.reshape(shape),)
