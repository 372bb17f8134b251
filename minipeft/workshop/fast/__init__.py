"""The fast paths: one module per op, each registered against its reference with `@fast_path_of`.

Importing this package registers them (`import minipeft` does so); `minipeft.set_fast_ops(False)` switches every
op back to its reference. Read the reference ops first (minipeft/ops/, the methods' op.py); each module here says
what it does differently and why. tests/test_fast_ops.py checks every pair equal.
"""

from minipeft.workshop.fast import (
    adamw,
    attention,
    cross_entropy,
    gelu,
    head_loss,
    layer_norm,
    lora,
    nf4,
    qlora,
    scatter_add,
)

__all__ = ["adamw", "attention", "cross_entropy", "gelu", "head_loss", "layer_norm", "lora", "nf4", "qlora",
           "scatter_add"]
