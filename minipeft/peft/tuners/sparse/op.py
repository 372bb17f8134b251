"""The sparse fine-tuning op: a frozen tensor with k of its entries replaced by trainable values.

    W'.flat[i] = values[j]   where i = indices[j]          W'.flat[i] = W0.flat[i]   elsewhere

indices (k,) are fixed, distinct and sorted; values (k,) train. W' is what the wrapped module's op uses, so
the upstream gradient dW' is the full weight gradient full fine-tuning would form; backward keeps only
its k selected entries. Gradients, AdamW's m and v, and its weight decay then exist for those k entries
alone: nothing else can move, with no mask in the optimizer. The values are the new entries (not
increments), so training `values` is exactly masked in-place training of W, weight decay included, and
writing them into W0 (merge) is an assignment, exact.
"""

from __future__ import annotations

from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype


def check_sparse_inputs(W0, values, indices) -> None:
    """values (k,) of W0's dtype and indices (k,) integers; a clear error otherwise.

    The indices must also be distinct and inside [0, W0.size) (a repeated index would get the gradient of every
    copy but keep one value; a negative one would wrap): that is checked where they are made, once, on the host
    (`layer.check_indices`), not here, where reading them back at every step would stall a GPU."""
    check_float("sparse_replace", "W0", W0)
    if values.ndim != 1 or indices.ndim != 1 or values.shape != indices.shape:
        raise ValueError(f"sparse_replace: values {values.shape} and indices {indices.shape} must both be (k,)")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"sparse_replace: indices must be integers, got dtype {indices.dtype}")
    if values.shape[0] > W0.size:
        raise ValueError(f"sparse_replace: {values.shape[0]} values for a tensor of {W0.size} entries")
    check_same_dtype("sparse_replace", W0=W0, values=values)


class SparseReplaceFn(Function):
    """W' = W0 with W'.flat[indices] = values; values, indices (k,) -> W0's shape."""

    @staticmethod
    def forward(ctx, W0, values, indices):
        check_sparse_inputs(W0, values, indices)
        out = W0.copy()                                  # W0's shape; the base itself is never written
        out.reshape(-1)[indices] = values                # W'.flat[indices] = values
        ctx.save_for_backward(indices, W0.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        # W' = W0 outside the indices and values at them, so
        #   dvalues[j] = dW'.flat[indices[j]]          (a gather: the k selected entries of the weight gradient)
        #   dW0 = dW' with the selected entries zeroed (those entries of W0 no longer reach the output)
        indices, shape = ctx.saved
        nW0, nvalues, _ = ctx.needs_input_grad
        flat = dout.reshape(-1)
        dvalues = flat[indices] if nvalues else None    # (k,)
        dW0 = None
        if nW0:
            dW0 = flat.copy()
            dW0[indices] = 0
            dW0 = dW0.reshape(shape)
        return dW0, dvalues, None


def sparse_replace(W0: Tensor, values: Tensor, indices) -> Tensor:
    """W0 with W0.flat[indices] replaced by values; gradients reach values at those entries only."""
    return SparseReplaceFn.apply(W0, values, indices)
