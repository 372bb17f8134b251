"""`grad_check`: compare autograd's gradients with float64 central differences, element by element."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from minipeft import Tensor, no_grad, to_numpy

# Tolerances, float64: the central difference (f(x+eps) - f(x-eps)) / 2eps has truncation error
# ~ eps^2 |f'''| / 6 ~ 1e-12 and roundoff ~ 1e-16 |f| / eps ~ 1e-10 |f|, so with eps = 1e-6 the
# numerical gradient is good to ~1e-10 relative. rtol = 1e-5 leaves five orders of margin for
# larger |f| or curvature (layer norm near zero variance) yet still catches any wrong formula, which
# is off by O(1) relative; atol = 1e-8 covers gradients that are exactly 0.


def grad_check(fn: Callable[..., Tensor], inputs: Sequence[np.ndarray], name: str, wrt=None,
               eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Assert autograd's d(sum(fn(*inputs) * dout))/d(inputs[i]) matches central differences.

    `fn` takes one Tensor per input and returns a Tensor; `wrt` lists the input indices to check
    (all by default; the others are passed as tensors that do not require grad).
    """
    arrays = [np.array(a, dtype=np.float64) for a in inputs]
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    tensors = [Tensor(a.copy(), requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    assert out.dtype == np.float64, f"{name}: float64 inputs gave a {out.dtype} output"
    # a fixed random upstream gradient: loss = sum(out * dout) tests every output element's weight
    dout = np.random.default_rng(1234).standard_normal(out.shape)
    out.backward(dout)

    def loss(args: list[np.ndarray]) -> float:
        with no_grad():
            return float(np.sum(to_numpy(fn(*(Tensor(a) for a in args))) * dout))

    for i in wrt:
        got = tensors[i].grad
        assert got is not None, f"{name}: argument {i} requires grad but got grad None"
        got = to_numpy(got)
        assert got.shape == arrays[i].shape, f"{name}: grad of argument {i} has shape {got.shape}, " \
                                             f"input has {arrays[i].shape}"
        num = np.zeros_like(arrays[i])
        for idx in np.ndindex(arrays[i].shape):
            args = [a.copy() for a in arrays]
            args[i][idx] += eps
            fp = loss(args)
            args[i][idx] -= 2 * eps
            fm = loss(args)
            num[idx] = (fp - fm) / (2 * eps)
        excess = np.abs(got - num) - (atol + rtol * np.abs(num))
        if (excess > 0).any():
            w = np.unravel_index(int(np.argmax(excess)), num.shape)
            where = tuple(int(j) for j in w)
            maxdiff = float(np.abs(got - num).max())
            raise AssertionError(f"{name}: gradient of argument {i} is wrong at index {where}: "
                                 f"autograd {float(got[w]):.10g} vs numerical {float(num[w]):.10g} "
                                 f"(maxdiff {maxdiff:.3e}, rtol={rtol}, atol={atol})")
