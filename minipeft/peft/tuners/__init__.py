"""The PEFT methods, one package each, and what they share (BaseTuner, BaseTunerLayer, targets, modules_to_save).

Importing this package imports every method, and each registers itself (see minipeft.peft.registry).
"""

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.lora import LoraConfig, LoraLinear, LoraModel, lora_linear
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper

__all__ = ["BaseTuner", "BaseTunerLayer", "LoraConfig", "LoraLinear", "LoraModel", "ModulesToSaveWrapper",
           "lora_linear"]
