"""Prompt tuning's op: n trainable virtual-token embeddings P (n, C) put in front of every sequence's embeddings.

    out[b] = [P ; x[b]]                (B, n + T, C): rows 0..n-1 are P, rows n.. are the tokens' embeddings

The model then runs on `out` as if the virtual tokens were words; only P trains. Every row of the batch
uses the same P, so P's gradient sums over the batch the slices of the upstream gradient that P filled.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_same_dtype


class PrependPromptFn(Function):
    """out = concat(broadcast(P, (B, n, C)), x) along time; P (n, C), x (B, T, C) -> (B, n + T, C)."""

    @staticmethod
    def forward(ctx, P, x):
        if P.ndim != 2 or x.ndim != 3 or P.shape[1] != x.shape[2]:
            raise ValueError(f"prepend_prompt: the prompt must be (n, C) and the embeddings (B, T, C) with the same "
                             f"C, got {P.shape} and {x.shape}")
        check_same_dtype("prepend_prompt", P=P, x=x)
        (B, T, C), n = x.shape, P.shape[0]
        out = backend.xp().empty((B, n + T, C), dtype=x.dtype)
        out[:, :n] = P                                            # every row of the batch gets the same prompt
        out[:, n:] = x
        ctx.save_for_backward(n)
        return out

    @staticmethod
    def backward(ctx, dout):
        # out[b, i] = P[i] for i < n and x[b, i - n] after, so
        #   dP[i]   = sum_b dout[b, i]        (P is shared by the batch: the slices add up)
        #   dx[b, t] = dout[b, n + t]         (the tokens' slice, unchanged)
        (n,) = ctx.saved
        need_P, need_x = ctx.needs_input_grad
        dP = dout[:, :n].sum(axis=0) if need_P else None          # (n, C)
        dx = dout[:, n:] if need_x else None                      # (B, T, C)
        return dP, dx


def prepend_prompt(P: Tensor, x: Tensor) -> Tensor:
    """[P ; x[b]] for every row b: the virtual tokens' embeddings (n, C) in front of x (B, T, C)."""
    return PrependPromptFn.apply(P, x)
