"""`IA3Linear`: wraps a frozen base `Linear` (never copied) with one or more named (IA)^3 scaling vectors."""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Tensor, no_grad
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
    other_param_names = ("is_feedforward",)
    mergeable = True

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"IA3Linear wraps a Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.ia3_l = ParameterDict()                 # per-adapter vectors (not modules)
        self._premerge: tuple | None = None          # (W, b) as they were before the first merge, while merged

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def update_layer(self, name: str, is_feedforward: bool, init_ia3_weights: bool = True) -> None:
        """Add vector `name`: (1, in) scales the input (feedforward), (out, 1) the output; ones unless init False."""
        self._check_new(name)
        dt = self.base_layer.weight.dtype
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        if init_ia3_weights:
            data = backend.xp().ones(shape, dtype=dt)
        else:                                        # Hugging Face's torch.randn: the output changes (tests)
            data = backend.rng().standard_normal(shape).astype(dt)
        self.ia3_l[name] = Parameter(data)
        self.is_feedforward[name] = is_feedforward
        if self.active_adapter is None:
            self.active_adapter = name

    def merge(self, name: str | None = None) -> None:
        """W <- W * l (rows and b <- b * l: output scaled; columns: input scaled) for the adapter (default: active)."""
        name = name or self.active_adapter
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is already merged into this layer; call unmerge() first")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; it holds {self.adapters}")
        W, b, l = self.base_layer.weight, self.base_layer.bias, self.ia3_l[name].data
        with no_grad():
            if not self.merged_adapters:
                self._premerge = (W.data.copy(), None if b is None else b.data.copy())
            W.data *= l                              # l (out, 1) scales rows, l (1, in) scales columns
            if b is not None and not self.is_feedforward[name]:
                b.data *= l[:, 0]                    # the output scaling also scales the bias
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Put back W (and b) exactly as the first merge() found them. Raises if nothing is merged."""
        if not self.merged_adapters:
            raise RuntimeError("unmerge(): no adapter is merged into this layer")
        W, b = self._premerge
        with no_grad():
            self.base_layer.weight.data = W
            if b is not None:
                self.base_layer.bias.data = b
        self._premerge, self.merged_adapters = None, []

    def forward(self, x: Tensor) -> Tensor:
        name = self.active_adapter
        if self.disable_adapters or self.merged or name is None:
            return self.base_layer(x)                # merged: W already holds l
        return ia3_linear(x, self.base_layer.weight, self.base_layer.bias, self.ia3_l[name],
                          scale_input=self.is_feedforward[name])

    def extra_repr(self) -> str:
        kinds = {n: "input" if ff else "output" for n, ff in self.is_feedforward.items()}
        return f"in={self.in_features}, out={self.out_features}, scales={kinds}, merged={self.merged}"
