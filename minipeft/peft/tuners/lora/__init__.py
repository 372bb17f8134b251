"""LoRA (Hu et al., 2021): W = W0 + (alpha / r) B A on the targeted Linear layers. One folder: config, op (and
its fast path), layer, model, and the one line that registers the method. On a 4-bit base (minipeft.quant)
the same adapters make QLoRA: qlora_op.py (and its fast path) and quantized.py's LoraLinear4bit."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.lora import fast as _fast  # noqa: F401 (registers the op's fast path)
from minipeft.peft.tuners.lora import qlora_fast as _qlora_fast  # noqa: F401 (and the QLoRA op's)
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.layer import LoraLinear
from minipeft.peft.tuners.lora.model import LoraModel
from minipeft.peft.tuners.lora.op import LoraLinearFn, lora_linear
from minipeft.peft.tuners.lora.qlora_op import QLoraLinearFn, qlora_linear
from minipeft.peft.tuners.lora.quantized import LoraLinear4bit

register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel, prefix="lora_")

__all__ = ["LoraConfig", "LoraLinear", "LoraLinear4bit", "LoraLinearFn", "LoraModel", "QLoraLinearFn", "lora_linear",
           "qlora_linear"]
