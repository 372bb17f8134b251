"""minipeft: parameter-efficient fine-tuning built from scratch on NumPy (CPU) or CuPy (GPU).

The book (what a student reads to learn PEFT) is this package: backend, autograd, ops, nn, peft, quant, optim,
loss, train, generate. minipeft.workshop serves it (fast paths, data, loaders, recipes, the command line); the
names below from the workshop are here only so that a user's first lines are short.
"""

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
from minipeft.ops.fastpath import fast_ops, fast_ops_enabled, set_fast_ops
from minipeft.peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from minipeft.quant import BitsAndBytesConfig, quantize_model
from minipeft.workshop import fast as _fast  # noqa: F401 (registers the ops' fast paths)
from minipeft.workshop.chat import chat_reply
from minipeft.workshop.data.generator import make_splits
from minipeft.workshop.finetune import evaluate, finetune
from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.pretrain import load_base_model

__version__ = "0.1.0"

__all__ = [
    "BitsAndBytesConfig", "Function", "LoraConfig", "PeftModel", "Tensor", "chat_reply", "evaluate", "fast_ops",
    "fast_ops_enabled", "finetune", "fork_rng", "get_default_dtype", "get_device", "get_peft_model",
    "get_peft_model_state_dict", "load_base_model", "load_pretrained", "make_splits", "manual_seed", "nn", "no_grad",
    "ops", "peft", "quant", "quantize_model", "set_default_dtype", "set_device", "set_fast_ops",
    "set_peft_model_state_dict", "tensor", "to_numpy", "tune_allocator", "xp",
]
