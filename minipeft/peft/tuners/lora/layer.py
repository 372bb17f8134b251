"""`LoraLayer`: LoRA's adapters on a wrapped base `Linear` (never copied); `LoraLinear` runs them on a float base."""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.nn.layers import Linear
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.lora.op import lora_linear


class LoraLayer(BaseTunerLayer):
    """y = base_layer(x) + s * B(A(dropout(x))) for the active adapter; merge() folds s*B@A into W0.

    Parameter names follow Hugging Face PEFT: `base_layer.weight`, `lora_A.<adapter>.weight` (r, in),
    `lora_B.<adapter>.weight` (out, r). What differs between a float base (LoraLinear) and a 4-bit one
    (LoraLinear4bit, quantized.py) is only `lora_forward`, the op that runs both paths, and how merging reaches W0.
    """

    adapter_layer_names = ("lora_A", "lora_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout")
    mergeable = True

    def create_adapter(self, adapter_name: str, config, r: int | None = None, lora_alpha: float | None = None) -> None:
        """A (r, in) and B (out, r), initialised so B A = 0 unless init_lora_weights is False; r and lora_alpha are
        this module's (rank_pattern, alpha_pattern), the config's by default."""
        r = config.r if r is None else r
        lora_alpha = config.lora_alpha if lora_alpha is None else lora_alpha
        dt = self.base_dtype
        A = Linear(self.in_features, r, bias=False)          # kaiming-uniform, bound 1/sqrt(in), as PEFT
        B = Linear(r, self.out_features, bias=False)
        if config.init_lora_weights == "gaussian":
            A.weight.data = (backend.rng().standard_normal(A.weight.shape) / r).astype(dt)
        if config.init_lora_weights is False:                # non-zero B: the adapter changes outputs (tests)
            B.weight.data = backend.rng().uniform(-1, 1, size=B.weight.shape).astype(dt) / math.sqrt(r)
        else:
            B.weight.data = backend.xp().zeros(B.weight.shape, dtype=dt)
        A.weight.data = A.weight.data.astype(dt)  # follow the base's dtype (e.g. float64 in tests)
        self.lora_A[adapter_name], self.lora_B[adapter_name] = A, B
        self.r[adapter_name], self.lora_alpha[adapter_name] = r, lora_alpha
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.lora_dropout[adapter_name] = config.lora_dropout

    def get_delta_weight(self, adapter_name: str):
        """s * B @ A, the (out, in) update this adapter adds to W0."""
        B, A = self.lora_B[adapter_name].weight.data, self.lora_A[adapter_name].weight.data
        return (B @ A) * B.dtype.type(self.scaling[adapter_name])

    def forward(self, x: Tensor) -> Tensor:
        name = self.active_adapter
        if self.disable_adapters or self.merged or name is None:
            # merged: W0 already holds s*B*A, adding the low-rank path again would count it twice
            return self.base_layer(x)
        p = self.lora_dropout[name] if self.training else 0.0
        return self.lora_forward(x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p)

    def lora_forward(self, x: Tensor, A: Tensor, B: Tensor, scale: float, dropout_p: float) -> Tensor:
        """base_layer(x) + scale * (dropout(x) A^T) B^T as one op."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lora_forward()")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.lora_A.keys()}, merged={self.merged}"


class LoraLinear(LoraLayer):
    """LoRA on a float `Linear`: the LoRA op (op.py) with W0 as it is."""

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"LoraLinear wraps a Linear, got {type(base_layer).__name__}")
        if base_layer.weight.dtype.kind != "f":
            raise TypeError(f"LoraLinear wraps a float Linear; this {type(base_layer).__name__} holds "
                            f"{base_layer.weight.dtype} codes: wrap it with LoraLinear4bit (LoraModel does)")
        super().__init__(base_layer)

    def lora_forward(self, x: Tensor, A: Tensor, B: Tensor, scale: float, dropout_p: float) -> Tensor:
        return lora_linear(x, self.base_layer.weight, self.base_layer.bias, A, B, scale, dropout_p)
