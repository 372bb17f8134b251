"""The PEFT methods, one package each, and what they share (BaseTuner, BaseTunerLayer, targets, modules_to_save).

Importing this package imports every method, and each registers itself (see minipeft.peft.registry).
"""

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.bottleneck import BottleneckConfig, BottleneckLayer, BottleneckModel
from minipeft.peft.tuners.ia3 import IA3Config, IA3Linear, IA3Model
from minipeft.peft.tuners.lora import LoraConfig, LoraLinear, LoraModel, lora_linear
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper
from minipeft.peft.tuners.prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from minipeft.peft.tuners.prompt_tuning import PromptTuningConfig, PromptTuningModel
from minipeft.peft.tuners.selective import SelectiveConfig, SelectiveModel
from minipeft.peft.tuners.sparse import SparseConfig, SparseModel

__all__ = ["BaseTuner", "BaseTunerLayer", "BottleneckConfig", "BottleneckLayer", "BottleneckModel",
           "IA3Config", "IA3Linear", "IA3Model", "LoraConfig", "LoraLinear", "LoraModel", "ModulesToSaveWrapper",
           "PrefixTuningConfig", "PrefixTuningModel", "PromptTuningConfig", "PromptTuningModel",
           "lora_linear", "SelectiveConfig", "SelectiveModel", "SparseConfig", "SparseModel"]
