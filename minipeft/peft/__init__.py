"""PEFT methods with the names Hugging Face PEFT users know: LoraConfig, get_peft_model, PeftModel,
register_peft_method. Each method is one package under minipeft/peft/tuners/, found there and exported here by
the names its own `__all__` lists (LoraConfig, IA3Config, bitfit_config, ...)."""

from minipeft.peft.config import ConfigError, PeftConfig
from minipeft.peft.peft_model import PeftModel, get_peft_model
from minipeft.peft.registry import PEFT_TYPE_TO_CONFIG, PEFT_TYPE_TO_TUNER, register_peft_method
from minipeft.peft.save_load import AdapterError, fingerprint
from minipeft.peft.state_dict import IncompatibleKeys, get_peft_model_state_dict, set_peft_model_state_dict
from minipeft.peft.tuners import METHOD_PACKAGES, BaseTuner, BaseTunerLayer

__all__ = ["PEFT_TYPE_TO_CONFIG", "PEFT_TYPE_TO_TUNER", "AdapterError", "BaseTuner", "BaseTunerLayer", "ConfigError",
           "IncompatibleKeys", "PeftConfig", "PeftModel", "fingerprint", "get_peft_model", "get_peft_model_state_dict",
           "register_peft_method", "set_peft_model_state_dict"]
for _package in METHOD_PACKAGES.values():
    for _name in _package.__all__:
        if _name in globals():
            raise ImportError(f"{_package.__name__} exports {_name!r}, a name minipeft.peft already has; rename it")
        globals()[_name] = getattr(_package, _name)
        __all__.append(_name)
