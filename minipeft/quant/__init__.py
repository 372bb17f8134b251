"""4-bit quantization of a base model, as QLoRA (Dettmers et al., 2023) does it, written out in NumPy/CuPy.

- `nf4.py`: the NormalFloat4 code book and blockwise absmax quantization, two codes per byte;
- `double_quant.py`: the block scales quantized again to 8 bits, with bitsandbytes' dynamic map (double quantization);
- `linear4bit.py`: `Linear4bit`, a frozen Linear held in NF4 and dequantized on the fly (forward and backward);
- `quantize.py`: `quantize_model(model, BitsAndBytesConfig(...))`, the step before `get_peft_model`;
- `storage.py`: bits per parameter and bytes, in closed form and measured.
Saving and loading a quantized model is file handling, in minipeft/workshop/quant_io.py.

LoRA on a quantized model (QLoRA) lives with LoRA: minipeft/peft/tuners/lora/qlora_op.py and quantized.py.
"""

from minipeft.quant.config import BitsAndBytesConfig, qlora_config
from minipeft.quant.double_quant import dequantize_absmax, dynamic_map, quantize_absmax
from minipeft.quant.linear4bit import Linear4bit, Linear4bitFn, QuantParameter, QuantState, linear4bit
from minipeft.quant.nf4 import NF4_CODE, dequantize_nf4, max_half_gap, pack_4bit, quantize_nf4, unpack_4bit
from minipeft.quant.quantize import (
    dequantize_model,
    is_quantized,
    quantization_error,
    quantize_model,
    quantized_layers,
)
from minipeft.quant.storage import bits_per_parameter, model_bytes, weight_bytes

__all__ = [
    "NF4_CODE", "BitsAndBytesConfig", "Linear4bit", "Linear4bitFn", "QuantParameter", "QuantState",
    "bits_per_parameter", "dequantize_absmax", "dequantize_model", "dequantize_nf4", "dynamic_map", "is_quantized",
    "linear4bit", "max_half_gap", "model_bytes", "pack_4bit", "qlora_config", "quantization_error",
    "quantize_absmax", "quantize_model", "quantize_nf4", "quantized_layers", "unpack_4bit",
    "weight_bytes",
]
