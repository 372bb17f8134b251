"""Cross-entropy fused with log-softmax: the loss of every model in this project.

    loss = mean over non-ignored rows of  -log softmax(z)[t]  =  logsumexp(z) - z[t]

Fusing the two makes the backward simple: dloss/dz = (softmax(z) - onehot(t)) / n. The fast path
(workshop/fast/cross_entropy.py) computes the same numbers with fewer passes; tests check both equal.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops.fastpath import pick


def check_targets(targets, V: int, ignore_index: int, op: str = "cross_entropy"):
    """Raise on bad class ids; return the valid-row mask, n = max(#valid, 1) (0-d) and the targets (N,) with
    ignored rows pointing at class 0 (`valid` zeroes their terms)."""
    xp = backend.xp()
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must be integer class ids, got dtype {targets.dtype}")
    t = targets.reshape(-1)                                       # (N,)
    valid = t != ignore_index
    if t.size and bool((valid & ((t < 0) | (t >= V))).any()):    # one read back (a sync on the GPU)
        tv = t[valid]
        bad = int(tv.min()) if int(tv.min()) < 0 else int(tv.max())
        raise IndexError(f"{op}: target {bad} is out of range for {V} classes "
                         f"(use ignore_index={ignore_index} for masked positions)")
    n = xp.maximum(valid.sum(), 1)  # stays on the device; all positions ignored -> loss 0 with zero gradient
    return valid, n, xp.where(valid, t, 0)


def check_cross_entropy_args(logits, targets, ignore_index: int):
    """Raise on bad targets; return z (N, V), the valid-row mask (N,), n = max(#valid, 1) (0-d), targets (N,)."""
    V = logits.shape[-1]
    if targets.dtype.kind in "iu" and logits.shape[:-1] != targets.shape:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape {logits.shape[:-1]}, "
                         f"got {targets.shape}")
    return (logits.reshape(-1, V), *check_targets(targets, V, ignore_index))            # z (N, V)


class CrossEntropyFn(Function):
    """mean over non-ignored targets of -log softmax(logits)[target]."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100):
        xp = backend.xp()
        z, valid, n, tt = check_cross_entropy_args(logits, targets, ignore_index)  # z (N, V); the rest (N,)
        m = z.max(axis=1, keepdims=True)                          # (N, 1) row max: exp(z - m) <= 1, no overflow
        lse = m + xp.log(xp.exp(z - m).sum(axis=1, keepdims=True))  # (N, 1) logsumexp(z)
        logp = z - lse                                            # (N, V) log softmax(z)
        nll = -logp[xp.arange(z.shape[0]), tt]                    # (N,) -log p[target]
        ctx.save_for_backward(xp.exp(logp), tt, valid, n, logits.shape)  # softmax(z) for the backward
        return (nll * valid).sum().astype(logits.dtype) / n.astype(logits.dtype)

    @staticmethod
    def backward(ctx, dout):
        # forward was loss = sum over valid rows of (logsumexp(z) - z[t]) / n, and d logsumexp(z)/dz = softmax(z),
        # so dz = (softmax(z) - onehot(t)) * dloss / n on valid rows, 0 on ignored ones
        p, tt, valid, n, shape = ctx.saved
        xp = backend.xp()
        g = (valid * (dout / n)).astype(p.dtype)[:, None]         # (N, 1) dloss / n, 0 on ignored rows
        dz = p * g                                                # (N, V)
        dz[xp.arange(dz.shape[0]), tt] -= g[:, 0]                 # - onehot(t) * g
        return dz.reshape(shape), None


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Fused log-softmax + negative log-likelihood over the last axis of logits."""
    t = targets.data if isinstance(targets, Tensor) else backend.xp().asarray(targets)
    return pick(CrossEntropyFn).apply(logits, Tensor(t), ignore_index=ignore_index)
