"""`LoraModel`: LoRA on the tuner contract: wrap each targeted Linear in a `LoraLinear` (a 4-bit one in a
`LoraLinear4bit`: QLoRA) at the rank and alpha the patterns give its path, and LoRA's `bias` option."""

from __future__ import annotations

from minipeft.nn.layers import Linear
from minipeft.nn.module import Module
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.layer import LoraLayer, LoraLinear
from minipeft.peft.tuners.lora.quantized import LoraLinear4bit
from minipeft.quant.linear4bit import Linear4bit


class LoraModel(BaseTuner):
    """The user's model with LoRA adapters on the Linear layers `target_modules` names."""

    layer_classes = (LoraLayer,)       # LoraLinear, and LoraLinear4bit for 4-bit bases
    target_types = (Linear,)           # Linear4bit (a quantized Linear) included
    mergeable = True
    pattern_fields = {"r": ("rank_pattern", "r"), "lora_alpha": ("alpha_pattern", "lora_alpha")}   # per module

    def _new_layer(self, target: Module, path: str) -> LoraLayer:
        return (LoraLinear4bit if isinstance(target, Linear4bit) else LoraLinear)(target)   # 4-bit: QLoRA

    def inject_adapter(self, name: str, config: LoraConfig) -> None:
        """BaseTuner's, with Hugging Face PEFT's rule for LoRA's bias option: an adapter with bias != 'none' trains
        the base model's own biases, which every adapter shares, so it is refused beside any other adapter."""
        if isinstance(config, LoraConfig) and config.bias != "none" and self.peft_config:
            raise ValueError(f"adapter {name!r}: bias={config.bias!r} trains the base model's biases, which the "
                             f"adapters {sorted(self.peft_config)} share; LoRA supports bias != 'none' only for a "
                             "model's single adapter. Set bias='none' for this one")
        super().inject_adapter(name, config)

    def _trained_biases(self, config: LoraConfig) -> list[str]:
        """bias="all": every base bias; "lora_only": the biases of the wrapped Linears; "none": none."""
        if config.bias == "none":
            return []
        slots = self.adapter_slot_names()
        names = []
        for name, _ in self.named_parameters():
            dotted = f".{name}."
            if not name.endswith(".bias") or ".original_module." in dotted or any(f".{s}." in dotted for s in slots):
                continue
            if config.bias == "all" or name.endswith(".base_layer.bias"):
                names.append(name)
        return names

    def _mark_extra_trainable(self, adapter_name: str, config: LoraConfig) -> None:
        params = dict(self.named_parameters())
        for name in self._trained_biases(config):
            params[name].requires_grad = True

    def _extra_saved_parameters(self, adapter_name: str, config: LoraConfig) -> list[str]:
        return self._trained_biases(config)

    def lora_layers(self) -> list[LoraLayer]:
        return [m for m in self.tuner_layers() if isinstance(m, LoraLayer)]
