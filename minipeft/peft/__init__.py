"""PEFT methods with the names Hugging Face PEFT users know: LoraConfig, get_peft_model, PeftModel."""

from minipeft.peft.config import LoraConfig, PeftConfig
from minipeft.peft.lora_layer import LoraLinear
from minipeft.peft.lora_op import lora_linear
from minipeft.peft.peft_model import PeftModel, get_peft_model
from minipeft.peft.save_load import AdapterError

__all__ = ["AdapterError", "LoraConfig", "LoraLinear", "PeftConfig", "PeftModel", "get_peft_model", "lora_linear"]
