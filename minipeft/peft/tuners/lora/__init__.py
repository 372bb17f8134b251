"""LoRA (Hu et al., 2021): W = W0 + (alpha / r) B A on the targeted Linear layers. One folder: config, op (and
its fast path), layer, model, and the one line that registers the method."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.lora import fast as _fast  # noqa: F401 (registers the op's fast path)
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.layer import LoraLinear
from minipeft.peft.tuners.lora.model import LoraModel
from minipeft.peft.tuners.lora.op import LoraLinearFn, lora_linear

register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel, prefix="lora_")

__all__ = ["LoraConfig", "LoraLinear", "LoraLinearFn", "LoraModel", "lora_linear"]
