"""Neural-network ops: embedding lookup, fused layer norm, softmax, dropout."""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, scatter_add
from minipeft.ops.fastpath import pick


class EmbeddingFn(Function):
    """y = W[ids]: one row of the table per token id."""

    @staticmethod
    def forward(ctx, W, ids):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding: token ids must be integers, got dtype {ids.dtype}")
        V = W.shape[0]
        if ids.size and bool(((ids < 0) | (ids >= V)).any()):  # one read back per call (a sync on the GPU)
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise IndexError(f"embedding: token id {bad} is out of range for a vocabulary of {V} "
                             f"(valid ids are 0..{V - 1}); was the input encoded with another tokenizer?")
        ctx.save_for_backward(ids, W.shape, W.dtype)
        return W[ids]                                          # (..., C)

    @staticmethod
    def backward(ctx, dout):
        # y[i] = W[ids[i]]  =>  dW[v] = sum over positions with ids == v of dy  (scatter-add)
        ids, shape, dtype = ctx.saved
        dW = backend.xp().zeros(shape, dtype=dtype)
        pick(scatter_add)(dW, ids.reshape(-1), dout.reshape(-1, shape[1]))
        return dW, None


def check_layer_norm_args(x, w, b) -> None:
    """Raise with a message naming the problem if weight or bias do not fit x's last axis, or dtypes differ."""
    check_float("layer_norm", "x", x)
    C = x.shape[-1]
    if (w is not None and w.shape != (C,)) or (b is not None and b.shape != (C,)):
        raise ValueError(f"layer_norm: x {x.shape} needs weight and bias of shape ({C},), "
                         f"got {None if w is None else w.shape}, {None if b is None else b.shape}")
    check_same_dtype("layer_norm", x=x, weight=w, bias=b)


class LayerNormFn(Function):
    """Layer norm over the last axis: y = (x - mean) / sqrt(var + eps) * w + b, as one op."""

    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        check_layer_norm_args(x, w, b)
        xp = backend.xp()
        mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)
        xc = x - mean                                          # (..., C) centred
        var = (xc * xc).mean(axis=-1, keepdims=True)           # (..., 1) biased variance, as PyTorch's
        rstd = 1.0 / xp.sqrt(var + eps)                        # (..., 1) reciprocal standard deviation
        xhat = xc * rstd                                       # (..., C) zero mean, unit variance
        ctx.save_for_backward(xhat, rstd, w)
        y = xhat if w is None else xhat * w                    # (..., C)
        return y if b is None else y + b

    @staticmethod
    def backward(ctx, dout):
        # forward was y = xhat * w + b with xhat = (x - mean) * rstd, so
        #   dw = sum over rows of dy * xhat,  db = sum over rows of dy,  dxhat = dy * w
        # and, since mean and rstd depend on x too (d mean/dx = 1/C, d rstd/dx = -rstd^3 (x - mean) / C),
        #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))       (means over the last axis)
        xhat, rstd, w = ctx.saved
        nx, nw, nb = ctx.needs_input_grad
        rows = tuple(range(dout.ndim - 1))                     # every axis but the last
        dw = (dout * xhat).sum(axis=rows) if nw else None      # (C,)
        db = dout.sum(axis=rows) if nb else None               # (C,)
        dx = None
        if nx:
            dxhat = dout if w is None else dout * w            # (..., C)
            dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                         - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))  # (..., C)
        return dx, dw, db


def softmax_array(x, axis: int = -1):
    """Numerically stable softmax of a raw array (shift by the max)."""
    xp = backend.xp()
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class SoftmaxFn(Function):
    """y = exp(x) / sum exp(x) along an axis (shifted by the max so exp cannot overflow)."""

    @staticmethod
    def forward(ctx, x, axis=-1):
        y = softmax_array(x, axis)
        ctx.save_for_backward(y, axis)
        return y

    @staticmethod
    def backward(ctx, dout):
        # y = softmax(x)  =>  dx = y * (dy - sum(dy * y))
        y, axis = ctx.saved
        return (y * (dout - (dout * y).sum(axis=axis, keepdims=True)),)


class DropoutFn(Function):
    """y = x * mask / (1 - p), the mask keeping each element with probability 1 - p."""

    @staticmethod
    def forward(ctx, x, p=0.0):
        keep = backend.rng().random(x.shape, dtype=x.dtype) >= p
        scale = x.dtype.type(1.0 / (1.0 - p))
        ctx.save_for_backward(keep, scale)
        return x * keep * scale

    @staticmethod
    def backward(ctx, dout):
        # y = x * mask / (1 - p)  =>  dx = dy * mask / (1 - p)
        keep, scale = ctx.saved
        return (dout * keep * scale,)


def embedding(ids, W: Tensor) -> Tensor:
    """Rows of W (V, C) picked by integer ids (...,) -> (..., C)."""
    ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
    return EmbeddingFn.apply(W, Tensor(ids))


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalize the last axis to zero mean, unit variance, then scale and shift."""
    return pick(LayerNormFn).apply(x, weight, bias, eps=eps)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return SoftmaxFn.apply(x, axis=axis)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity in eval."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return DropoutFn.apply(x, p=p)
