"""LoRA (Hu et al., 2021): W = W0 + (alpha / r) B A on the targeted Linear layers. One folder: config, op, layer,
model, and the one line that registers the method. On a 4-bit base (minipeft.quant) the same adapters make
QLoRA: qlora_op.py and quantized.py's LoraLinear4bit. The ops' fast paths are in minipeft/workshop/fast/."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.layer import LoraLinear
from minipeft.peft.tuners.lora.model import LoraModel
from minipeft.peft.tuners.lora.op import LoraLinearFn, lora_linear
from minipeft.peft.tuners.lora.qlora_op import QLoraLinearFn, qlora_linear
from minipeft.peft.tuners.lora.quantized import LoraLinear4bit

register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel, prefix="lora_")

__all__ = ["LoraConfig", "LoraLinear", "LoraLinear4bit", "LoraLinearFn", "LoraModel", "QLoraLinearFn", "lora_linear",
           "qlora_linear"]
