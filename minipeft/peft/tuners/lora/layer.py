"""`LoraLinear`: wraps a frozen base `Linear` (never copied) with one or more named LoRA adapters."""

from __future__ import annotations

import math

from minipeft import backend
from minipeft.autograd import Tensor, no_grad
from minipeft.nn.layers import Linear
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.lora.op import lora_linear


class LoraLinear(BaseTunerLayer):
    """y = base_layer(x) + s * B(A(dropout(x))) for the active adapter; merge() folds s*B@A into W0.

    Parameter names follow Hugging Face PEFT: `base_layer.weight`, `lora_A.<adapter>.weight` (r, in),
    `lora_B.<adapter>.weight` (out, r).
    """

    adapter_layer_names = ("lora_A", "lora_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout")
    mergeable = True
    accepts_4bit = False    # a 4-bit (Linear4bit) base takes LoraLinear4bit (quantized.py)

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"LoraLinear wraps a Linear, got {type(base_layer).__name__}")
        if getattr(base_layer, "weight", None) is not None and base_layer.weight.dtype.kind != "f" \
                and not self.accepts_4bit:
            raise TypeError(f"LoraLinear wraps a float Linear; this {type(base_layer).__name__} holds "
                            f"{base_layer.weight.dtype} codes: wrap it with LoraLinear4bit (LoraModel does)")
        super().__init__(base_layer)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def update_layer(self, name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights: bool | str = True, use_rslora: bool = False) -> None:
        """Add adapter `name`: A (r, in) and B (out, r), initialised so B A = 0 unless init is False."""
        self._check_new(name)
        dt = self.base_dtype
        A = Linear(self.in_features, r, bias=False)          # kaiming-uniform, bound 1/sqrt(in), as PEFT
        B = Linear(r, self.out_features, bias=False)
        if init_lora_weights == "gaussian":
            A.weight.data = (backend.rng().standard_normal(A.weight.shape) / r).astype(dt)
        if init_lora_weights is False:                       # non-zero B: the adapter changes outputs (tests)
            B.weight.data = backend.rng().uniform(-1, 1, size=B.weight.shape).astype(dt) / math.sqrt(r)
        else:
            B.weight.data = backend.xp().zeros(B.weight.shape, dtype=dt)
        A.weight.data = A.weight.data.astype(dt)  # follow the base's dtype (e.g. float64 in tests)
        self.lora_A[name], self.lora_B[name] = A, B
        self.r[name], self.lora_alpha[name] = r, lora_alpha
        self.scaling[name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout[name] = lora_dropout
        if self.active_adapter is None:
            self.active_adapter = name

    def delta_weight(self, name: str):
        """s * B @ A, the (out, in) update this adapter adds to W0."""
        B, A = self.lora_B[name].weight.data, self.lora_A[name].weight.data
        return (B @ A) * B.dtype.type(self.scaling[name])

    def merge(self, name: str | None = None) -> None:
        """W0 += s * B A for the adapter (default: the active one). Merging an adapter twice raises."""
        name = name or self.active_adapter
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is already merged into this layer; call unmerge() first")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; it holds {self.adapters}")
        with no_grad():
            self.base_layer.weight.data += self.delta_weight(name)
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """W0 -= s * B A for every merged adapter, restoring W0 up to float rounding. Raises if none is merged."""
        if not self.merged_adapters:
            raise RuntimeError("unmerge(): no adapter is merged into this layer")
        with no_grad():
            while self.merged_adapters:
                self.base_layer.weight.data -= self.delta_weight(self.merged_adapters.pop())

    def forward(self, x: Tensor) -> Tensor:
        name = self.active_adapter
        if self.disable_adapters or self.merged or name is None:
            # merged: W0 already holds s*B*A, adding the low-rank path again would count it twice
            return self.base_layer(x)
        p = self.lora_dropout[name] if self.training else 0.0
        return lora_linear(x, self.base_layer.weight, self.base_layer.bias, self.lora_A[name].weight,
                           self.lora_B[name].weight, self.scaling[name], p)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.lora_A.keys()}, merged={self.merged}"

