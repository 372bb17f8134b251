"""The bottleneck adapter op (Houlsby et al., 2019; Pfeiffer et al., 2020), one explicit forward/backward.

    out = y + f(y W_down^T + b_down) W_up^T + b_up        W_down: (m, d),  W_up: (d, m),  m << d

y (..., d) is the output of the layer the adapter follows (attention's out_proj, the MLP's fc2). The
adapter projects it down to m features, applies the nonlinearity f (ReLU, or GELU in GPT-2's tanh
approximation: transformers' "gelu_new", not the exact erf "gelu" of torch's nn.GELU()), projects back up
and adds the result to y: a residual "bottleneck" inserted into the network. With W_up = 0 and
b_up = 0 (the initialisation) out == y exactly, so training starts from the base model.

f sits between the two projections, so out is not linear in y: no matrix folded into the base weight
can reproduce it, and the adapter always costs its two small products at inference (tutorial 06
measures how much). Backward forms only the gradients asked for: with every weight of the base frozen,
dy is still needed (it carries the gradient to the earlier layers' adapters), but no gradient of the base
layer's (d, k) weight.
"""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm
from minipeft.ops.elementwise import GELU_A, GELU_C

NON_LINEARITIES = ("gelu", "relu")   # "gelu" is the tanh approximation (transformers' "gelu_new")


def activation(z, kind: str):
    """f(z) and what its derivative needs: relu -> (z * [z > 0], mask); gelu (GPT-2's tanh form) -> (f, tanh u)."""
    if kind == "relu":
        mask = z > 0
        return z * mask, mask
    t = backend.xp().tanh(GELU_C * (z + GELU_A * z**3))            # u = c (z + 0.044715 z^3),  c = sqrt(2/pi)
    return 0.5 * z * (1 + t), t


def activation_grad(z, saved, kind: str):
    """f'(z): relu -> [z > 0];  gelu -> 0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 * 0.044715 z^2), t = tanh u."""
    if kind == "relu":
        return saved
    t = saved
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * (GELU_C * (1 + 3 * GELU_A * z * z))


def check_bottleneck_inputs(y, W_down, b_down, W_up, b_up, kind: str) -> None:
    """y (..., d), W_down (m, d), b_down (m,), W_up (d, m), b_up (d,), one float dtype, a known f."""
    check_float("bottleneck_adapter", "y", y)
    if kind not in NON_LINEARITIES:
        raise ValueError(f"bottleneck_adapter: non_linearity must be one of {NON_LINEARITIES}, got {kind!r}")
    m, d = W_down.shape
    if (y.shape[-1] != d or W_up.shape != (d, m) or (b_down is not None and b_down.shape != (m,))
            or (b_up is not None and b_up.shape != (d,))):
        raise ValueError(f"bottleneck_adapter: y {y.shape}, W_down {W_down.shape}, "
                         f"b_down {None if b_down is None else b_down.shape}, W_up {W_up.shape}, "
                         f"b_up {None if b_up is None else b_up.shape} do not fit; need y (..., d), W_down (m, d), "
                         "b_down (m,), W_up (d, m), b_up (d,)")
    check_same_dtype("bottleneck_adapter", y=y, W_down=W_down, b_down=b_down, W_up=W_up, b_up=b_up)


class BottleneckAdapterFn(Function):
    """out = y + f(y W_down^T + b_down) W_up^T + b_up; y (..., d), W_down (m, d), W_up (d, m) -> (..., d)."""

    @staticmethod
    def forward(ctx, y, W_down, b_down, W_up, b_up, non_linearity="relu"):
        check_bottleneck_inputs(y, W_down, b_down, W_up, b_up, non_linearity)
        d = W_down.shape[1]
        y2 = y.reshape(-1, d)                                        # (N, d)
        z = mm(y2, W_down.T)                                         # (N, m) down-projection
        if b_down is not None:
            z += b_down
        a, saved = activation(z, non_linearity)                      # (N, m) f(z)
        out = mm(a, W_up.T)                                          # (N, d) up-projection
        if b_up is not None:
            out += b_up
        out += y2                                                    # (N, d) the residual: y passes through
        ctx.save_for_backward(y2, z, a, saved, W_down, W_up, non_linearity, y.shape)
        return out.reshape(y.shape)

    @staticmethod
    def backward(ctx, dout):
        # forward was out = y + a W_up^T + b_up with a = f(z), z = y W_down^T + b_down, so
        #   dW_up = dout^T a;  db_up = sum_rows dout;  da = dout W_up;  dz = da * f'(z)
        #   dW_down = dz^T y;  db_down = sum_rows dz;  dy = dout + dz W_down   (the identity path, plus the adapter)
        y2, z, a, saved, W_down, W_up, kind, yshape = ctx.saved
        ny, nWd, nbd, nWu, nbu = ctx.needs_input_grad
        dout2 = dout.reshape(-1, W_up.shape[0])                      # (N, d)
        dW_up = mm(dout2.T, a) if nWu else None                      # (d, m)
        db_up = dout2.sum(axis=0) if nbu else None                   # (d,)
        dz = None
        if ny or nWd or nbd:
            dz = mm(dout2, W_up) * activation_grad(z, saved, kind)   # (N, m)
        dW_down = mm(dz.T, y2) if nWd else None                      # (m, d)
        db_down = dz.sum(axis=0) if nbd else None                    # (m,)
        dy = (dout2 + mm(dz, W_down)).reshape(yshape) if ny else None  # (..., d)
        return dy, dW_down, db_down, dW_up, db_up


def bottleneck_adapter(y: Tensor, W_down: Tensor, b_down: Tensor | None, W_up: Tensor, b_up: Tensor | None,
                       non_linearity: str = "relu") -> Tensor:
    """y + f(y W_down^T + b_down) W_up^T + b_up, f = GELU or ReLU (the residual bottleneck adapter)."""
    return BottleneckAdapterFn.apply(y, W_down, b_down, W_up, b_up, non_linearity=non_linearity)
