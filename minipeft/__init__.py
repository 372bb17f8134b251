"""minipeft: parameter-efficient fine-tuning built from scratch on NumPy (CPU) or CuPy (GPU)."""

from minipeft import nn, ops, peft, quant
from minipeft.autograd import Function, Tensor, no_grad, tensor
from minipeft.backend import (
    fork_rng,
    get_default_dtype,
    get_device,
    manual_seed,
    set_default_dtype,
    set_device,
    to_numpy,
    tune_allocator,
    xp,
)
from minipeft.llm import load_pretrained
from minipeft.ops.fastpath import fast_ops, fast_ops_enabled, set_fast_ops
from minipeft.peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from minipeft.quant import BitsAndBytesConfig, quantize_model

__version__ = "0.1.0"

__all__ = [
    "BitsAndBytesConfig", "Function", "LoraConfig", "PeftModel", "Tensor", "fast_ops", "fast_ops_enabled",
    "fork_rng", "get_default_dtype", "get_device", "get_peft_model", "get_peft_model_state_dict", "load_pretrained",
    "manual_seed", "nn", "no_grad", "ops", "peft", "quant", "quantize_model", "set_default_dtype", "set_device",
    "set_fast_ops", "set_peft_model_state_dict", "tensor", "to_numpy", "tune_allocator", "xp",
]
