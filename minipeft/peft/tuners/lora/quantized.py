"""`LoraLinear4bit`: LoRA on a 4-bit `Linear4bit` base, which is QLoRA (Hugging Face PEFT: lora/bnb.py's Linear4bit).

Everything LoRA does is unchanged (adapter weights, scaling, dropout, several adapters, saving: the
adapter files are identical to LoRA's on a float base); what differs is the base:

- forward runs the QLoRA op (qlora_op.py): W0 is dequantized on the fly, A and B stay float;
- merge cannot add s B A into 4-bit codes exactly. It dequantizes the base into a float Linear and adds
  s B A there: merged outputs equal unmerged ones to float rounding, and merge_and_unload() returns the
  model with float Linears at the merged places. To go back to 4 bits, run quantize_model() on that
  model: it re-quantizes them (a second rounding, measured in tutorial 10). Hugging Face PEFT instead
  re-quantizes inside merge(); here the lossy step is a separate, visible call;
- unmerge puts the original 4-bit layer back, bit for bit (it was kept, not re-derived).
"""

from __future__ import annotations

from minipeft.autograd import Tensor
from minipeft.peft.tuners.lora.layer import LoraLayer
from minipeft.peft.tuners.lora.qlora_op import qlora_linear
from minipeft.quant.linear4bit import Linear4bit


class LoraLinear4bit(LoraLayer):
    """y = x dequantize(W0)^T + b + s * B(A(dropout(x))); A and B float, W0 in NF4 and frozen."""

    def __init__(self, base_layer: Linear4bit):
        if not isinstance(base_layer, Linear4bit):
            raise TypeError(f"LoraLinear4bit wraps a Linear4bit (a quantized Linear), got {type(base_layer).__name__};"
                            " wrap a float Linear with LoraLinear")
        super().__init__(base_layer)
        self._quantized: list[Linear4bit] = []    # the 4-bit base while merged (a list: not a child module)

    def merge_into_base(self, name: str) -> None:
        """Dequantize the base into a float Linear (on the first merge) and add s * B A to it."""
        if not self.merged:
            self._quantized.append(self.base_layer)
            self.base_layer = self.base_layer.to_linear()
        super().merge_into_base(name)

    def unmerge_from_base(self) -> None:
        """Put the original 4-bit base back, exactly as it was."""
        self.base_layer = self._quantized.pop()

    def lora_forward(self, x: Tensor, A: Tensor, B: Tensor, scale: float, dropout_p: float) -> Tensor:
        base = self.base_layer
        return qlora_linear(x, base.quant_state(), base.bias, A, B, scale, dropout_p)
