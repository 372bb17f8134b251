"""minipeft: parameter-efficient fine-tuning built from scratch on NumPy (CPU) or CuPy (GPU)."""

from minipeft import ops
from minipeft.autograd import Function, Tensor, no_grad, tensor
from minipeft.backend import (
    get_default_dtype,
    get_device,
    manual_seed,
    set_default_dtype,
    set_device,
    to_numpy,
    xp,
)

__version__ = "0.1.0"

__all__ = [
    "Function", "Tensor", "get_default_dtype", "get_device", "manual_seed", "no_grad", "ops",
    "set_default_dtype", "set_device", "tensor", "to_numpy", "xp",
]
