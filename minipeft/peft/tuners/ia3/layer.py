"""`IA3Linear`: wraps a frozen base `Linear` (never copied) with one or more named (IA)^3 scaling vectors."""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.nn.layers import Linear
from minipeft.nn.module import Parameter, ParameterDict
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.ia3.op import ia3_linear


class IA3Linear(BaseTunerLayer):
    """(x W^T + b) * l^T (output scaled, l (out, 1)) or (x * l) W^T + b (feedforward: input scaled, l (1, in)).

    Parameter names follow Hugging Face PEFT: `base_layer.weight`, `ia3_l.<adapter>` (saved as `...ia3_l`).
    merge() folds l into W (and into b when the output is scaled); unmerge() puts back the exact weights
    merge() found, which it keeps while merged: undoing the fold by dividing by l would round (and a zero
    in l would have erased its row or column for good).
    """

    adapter_layer_names = ("ia3_l",)
    slot_type = ParameterDict                        # per-adapter vectors (not modules)
    other_param_names = ("is_feedforward",)
    mergeable = True

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"IA3Linear wraps a Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self._premerge: tuple | None = None          # (W, b) as they were before the first merge, while merged

    def create_adapter(self, adapter_name: str, config, is_feedforward: bool) -> None:
        """Vector l: (1, in) scales the input (a feedforward module), (out, 1) the output; ones unless
        config.init_ia3_weights is False."""
        dt = self.base_dtype
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        if config.init_ia3_weights:
            data = backend.xp().ones(shape, dtype=dt)
        else:                                        # Hugging Face's torch.randn: the output changes (tests)
            data = backend.rng().standard_normal(shape).astype(dt)
        self.ia3_l[adapter_name] = Parameter(data)
        self.is_feedforward[adapter_name] = is_feedforward

    def merge_into_base(self, name: str) -> None:
        """W <- W * l (rows and b <- b * l: output scaled; columns: input scaled), keeping W and b as the first
        merge found them."""
        W, b, l = self.base_layer.weight, self.base_layer.bias, self.ia3_l[name].data
        if not self.merged_adapters:
            self._premerge = (W.data.copy(), None if b is None else b.data.copy())
        W.data *= l                                  # l (out, 1) scales rows, l (1, in) scales columns
        if b is not None and not self.is_feedforward[name]:
            b.data *= l[:, 0]                        # the output scaling also scales the bias

    def unmerge_from_base(self) -> None:
        """Put back W (and b) exactly as the first merge() found them."""
        W, b = self._premerge
        self.base_layer.weight.data = W
        if b is not None:
            self.base_layer.bias.data = b
        self._premerge = None

    def forward(self, x: Tensor) -> Tensor:
        name = self.active_adapter
        if self.disable_adapters or self.merged or name is None:
            return self.base_layer(x)                # merged: W already holds l
        return ia3_linear(x, self.base_layer.weight, self.base_layer.bias, self.ia3_l[name],
                          scale_input=self.is_feedforward[name])

    def extra_repr(self) -> str:
        kinds = {n: "input" if ff else "output" for n, ff in self.is_feedforward.items()}
        return f"in={self.in_features}, out={self.out_features}, scales={kinds}, merged={self.merged}"
