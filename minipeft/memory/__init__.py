"""Memory: measure what a training step holds, predict it from shapes, and size large models on paper.

- `measure` (the helpers every tutorial uses): `PeakMemory`, `param_bytes`, `grad_bytes`,
  `optimizer_state_bytes`, `format_bytes`, and `measure_step`, which runs one real training step and reads
  each component (weights, gradients, optimizer state, activations, peak) from the allocator.
- `predict`: the same components for a minipeft GPT from its shapes alone, array by array as the tape keeps
  them (`predict_step`), for full fine-tuning and LoRA (QLoRA's 4-bit weights included).
- `large`: the arithmetic for models too big to run here (1B, 7B, 65B, 175B) from their dimensions, for full
  fine-tuning, LoRA and QLoRA, beside the figures the LoRA and QLoRA papers publish.
"""

from minipeft.memory.large import LARGE_MODELS, LargeModel, large_model_memory, weights_bytes
from minipeft.memory.measure import (
    PeakMemory,
    StepMemory,
    format_bytes,
    grad_bytes,
    measure_peak,
    measure_step,
    optimizer_state_bytes,
    param_bytes,
)
from minipeft.memory.predict import predict_step

__all__ = [
    "LARGE_MODELS", "LargeModel", "PeakMemory", "StepMemory", "format_bytes", "grad_bytes", "large_model_memory",
    "measure_peak", "measure_step", "optimizer_state_bytes", "param_bytes", "predict_step", "weights_bytes",
]
