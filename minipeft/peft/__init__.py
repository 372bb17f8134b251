"""PEFT methods with the names Hugging Face PEFT users know: LoraConfig, get_peft_model, PeftModel,
register_peft_method. Each method is one package under minipeft/peft/tuners/."""

from minipeft.peft.config import ConfigError, PeftConfig
from minipeft.peft.peft_model import PeftModel, get_peft_model
from minipeft.peft.registry import PEFT_TYPE_TO_CONFIG, PEFT_TYPE_TO_TUNER, register_peft_method
from minipeft.peft.save_load import AdapterError, fingerprint
from minipeft.peft.state_dict import IncompatibleKeys, get_peft_model_state_dict, set_peft_model_state_dict
from minipeft.peft.tuners import (
    BaseTuner,
    BaseTunerLayer,
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    LoraLinear,
    LoraModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    lora_linear,
)
from minipeft.peft.tuners.selective import (
    SelectiveConfig,
    bitfit_config,
    embeddings_config,
    full_finetune_config,
    last_k_layers_config,
    layernorm_config,
)
from minipeft.peft.tuners.sparse import SparseConfig, select_sparse_entries

__all__ = [
    "PEFT_TYPE_TO_CONFIG", "PEFT_TYPE_TO_TUNER", "AdapterError", "BaseTuner", "BaseTunerLayer", "BottleneckConfig",
    "ConfigError", "IA3Config",
    "LoraConfig", "LoraLinear", "LoraModel", "PeftConfig", "PeftModel", "PrefixTuningConfig",
    "PromptTuningConfig", "fingerprint", "get_peft_model", "get_peft_model_state_dict", "IncompatibleKeys",
    "set_peft_model_state_dict",
    "lora_linear", "register_peft_method",
    "SelectiveConfig", "SparseConfig", "bitfit_config", "embeddings_config", "full_finetune_config",
    "last_k_layers_config", "layernorm_config", "select_sparse_entries",
]
