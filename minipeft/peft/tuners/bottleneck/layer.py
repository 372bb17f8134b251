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
    why_not_mergeable = NOT_MERGEABLE

    def __init__(self, base_layer: Linear):
        if not isinstance(base_layer, Linear):
            raise TypeError(f"BottleneckLayer follows a Linear, got {type(base_layer).__name__}")
        super().__init__(base_layer)

    def create_adapter(self, adapter_name: str, config, bottleneck_size: int) -> None:
        """Down (m, d) kaiming-uniform as a Linear's, up (d, m) zero, both biases zero, m = bottleneck_size.

        With W_up = 0 and b_up = 0 the adapter adds exactly 0: the model starts as the base model, and the
        first step's gradient reaches W_up through f(y W_down^T) (non-zero, since W_down is random).
        """
        xp, dt, d = backend.xp(), self.base_dtype, self.out_features   # a 4-bit base: its compute dtype, not uint8
        down = Linear(d, bottleneck_size, bias=True)
        up = Linear(bottleneck_size, d, bias=True)
        down.weight.data = down.weight.data.astype(dt)
        down.bias.data = xp.zeros(bottleneck_size, dtype=dt)
        up.weight.data = xp.zeros((d, bottleneck_size), dtype=dt)
        up.bias.data = xp.zeros(d, dtype=dt)
        self.adapter_down[adapter_name], self.adapter_up[adapter_name] = down, up
        self.non_linearity[adapter_name] = config.non_linearity

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
