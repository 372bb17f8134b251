"""`BottleneckLayer`: a frozen base `Linear` (never copied) followed by one or more named bottleneck adapters."""

from __future__ import annotations

from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.nn.layers import Linear
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.bottleneck.op import bottleneck_adapter

NOT_MERGEABLE = ("a nonlinearity f sits between the adapter's two projections, so out = y + f(y W_down^T + b_down) "
                 "W_up^T + b_up is not linear in y and no single weight matrix (or change of the base weights) "
                 "equals it")


class BottleneckLayer(BaseTunerLayer):
    """y = base_layer(x); out = y + f(y W_down^T + b_down) W_up^T + b_up for the active adapter.

    Parameter names: `base_layer.weight`, `adapter_down.<adapter>.weight` (m, d) and `.bias` (m,),
    `adapter_up.<adapter>.weight` (d, m) and `.bias` (d,): 2 d m + d + m trainable numbers per adapter.
    """

    adapter_layer_names = ("adapter_down", "adapter_up")
    other_param_names = ("non_linearity",)

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"BottleneckLayer follows a Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def update_layer(self, name: str, bottleneck_size: int, non_linearity: str = "relu") -> None:
        """Add adapter `name`: down (m, d) kaiming-uniform as a Linear's, up (d, m) zero, both biases zero.

        With W_up = 0 and b_up = 0 the adapter adds exactly 0: the model starts as the base model, and the
        first step's gradient reaches W_up through f(y W_down^T) (non-zero, since W_down is random).
        """
        self._check_new(name)
        xp, dt, d = backend.xp(), self.base_dtype, self.out_features   # a 4-bit base: its compute dtype, not uint8
        down = Linear(d, bottleneck_size, bias=True)
        up = Linear(bottleneck_size, d, bias=True)
        down.weight.data = down.weight.data.astype(dt)
        down.bias.data = xp.zeros(bottleneck_size, dtype=dt)
        up.weight.data = xp.zeros((d, bottleneck_size), dtype=dt)
        up.bias.data = xp.zeros(d, dtype=dt)
        self.adapter_down[name], self.adapter_up[name] = down, up
        self.non_linearity[name] = non_linearity
        if self.active_adapter is None:
            self.active_adapter = name

    def merge(self, name: str | None = None) -> None:
        raise TypeError(f"a bottleneck adapter cannot be merged into its base layer: {NOT_MERGEABLE}; keep it "
                        "unmerged")

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        name = self.active_adapter
        if self.disable_adapters or name is None:
            return y
        down, up = self.adapter_down[name], self.adapter_up[name]
        return bottleneck_adapter(y, down.weight, down.bias, up.weight, up.bias, self.non_linearity[name])

    def extra_repr(self) -> str:
        sizes = {n: m.out_features for n, m in self.adapter_down.items()}
        return f"out={self.out_features}, bottleneck={sizes}"
