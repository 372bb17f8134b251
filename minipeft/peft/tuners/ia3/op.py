"""The (IA)^3 op (Liu et al., 2022): a frozen linear layer whose output, or input, is rescaled by a learned vector.

    scale the output (keys, values):          y = (x W^T + b) * l^T       l: (d, 1), one number per output
    scale the input (the MLP's fc2):          y = (x * l) W^T + b         l: (1, k), one number per input

"Infused Adapter by Inhibiting and Amplifying Inner Activations": the paper rescales the attention keys and
values and the MLP's inner activation gelu(fc1(x)); that activation is fc2's input, hence the second form.
The vector's shapes are Hugging Face PEFT's (`ia3_l`, saved as such); Hugging Face multiplies by
`ia3_l.flatten()`, and l^T does the same for (d, 1). With
l = 1 (the initialisation) both forms return x W^T + b exactly.

Both forms are linear in x for a fixed l, so they fold into the weights (layer.py merges them): output
scaling multiplies W's rows and b by l, input scaling multiplies W's columns (b is not scaled). W and b
stay frozen, so backward forms dx and dl; dW and db only if the caller made them trainable.
"""

from __future__ import annotations

from minipeft.autograd import Function, Tensor
from minipeft.ops._util import check_float, check_same_dtype, mm


def check_ia3_inputs(x, W, b, l, scale_input: bool) -> None:
    """x (..., k), W (d, k), b (d,) or None, l (1, k) to scale the input or (d, 1) the output, one float dtype."""
    check_float("ia3_linear", "x", x)
    d, k = W.shape
    want = (1, k) if scale_input else (d, 1)
    if x.shape[-1] != k or l.shape != want or (b is not None and b.shape != (d,)):
        raise ValueError(f"ia3_linear: x {x.shape}, W {W.shape}, b {None if b is None else b.shape}, l {l.shape} "
                         f"do not fit; need x (..., k), W (d, k), b (d,) and l {'(1, k)' if scale_input else '(d, 1)'} "
                         f"to scale the layer's {'input' if scale_input else 'output'}, here {want}")
    check_same_dtype("ia3_linear", x=x, W=W, b=b, l=l)


class IA3LinearFn(Function):
    """(x W^T + b) * l^T with l (d, 1); or, with scale_input, (x * l) W^T + b with l (1, k)."""

    @staticmethod
    def forward(ctx, x, W, b, l, scale_input=False):
        check_ia3_inputs(x, W, b, l, scale_input)
        d, k = W.shape
        x2 = x.reshape(-1, k)                                        # (N, k)
        if scale_input:
            h = x2 * l                                               # (N, k) the rescaled input
            y = mm(h, W.T)                                           # (N, d)
            if b is not None:
                y += b
        else:
            h = mm(x2, W.T)                                          # (N, d) the base output, before scaling
            if b is not None:
                h += b
            y = h * l.T                                              # (N, d) the rescaled output
        ctx.save_for_backward(x2, h, W, l, scale_input, x.shape)
        return y.reshape(*x.shape[:-1], d)                           # (..., d)

    @staticmethod
    def backward(ctx, dout):
        x2, h, W, l, scale_input, xshape = ctx.saved
        nx, nW, nb, nl = ctx.needs_input_grad
        dy = dout.reshape(-1, W.shape[0])                            # (N, d)
        dx = dW = db = dl = None
        if scale_input:
            # y = xs W^T + b with xs = x * l (h = xs), so
            #   dxs = dy W;  dl = sum_rows(dxs * x);  dx = dxs * l;  dW = dy^T xs;  db = sum_rows dy
            dxs = mm(dy, W) if (nx or nl) else None                  # (N, k)
            dl = (dxs * x2).sum(axis=0, keepdims=True) if nl else None  # (1, k)
            dx = (dxs * l).reshape(xshape) if nx else None
            dW = mm(dy.T, h) if nW else None                         # (d, k)
            db = dy.sum(axis=0) if nb else None
        else:
            # y = h * l^T with h = x W^T + b, so
            #   dl = sum_rows(dy * h)^T;  dh = dy * l^T;  dx = dh W;  dW = dh^T x;  db = sum_rows dh
            dl = (dy * h).sum(axis=0)[:, None] if nl else None       # (d, 1)
            dh = dy * l.T if (nx or nW or nb) else None              # (N, d)
            dx = mm(dh, W).reshape(xshape) if nx else None
            dW = mm(dh.T, x2) if nW else None                        # (d, k) never formed for a frozen base
            db = dh.sum(axis=0) if nb else None
        return dx, dW, db, dl


def ia3_linear(x: Tensor, W: Tensor, b: Tensor | None, l: Tensor, scale_input: bool = False) -> Tensor:
    """(x W^T + b) * l^T for l (d, 1), or (x * l) W^T + b for l (1, k) with scale_input=True."""
    return IA3LinearFn.apply(x, W, b, l, scale_input=scale_input)
