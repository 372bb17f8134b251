"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): out = y + f(y W_down^T + b_down) W_up^T + b_up
after the targeted Linears. One folder: config, op, layer, model, and the one line that registers the method."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.bottleneck.config import BottleneckConfig
from minipeft.peft.tuners.bottleneck.layer import BottleneckLayer
from minipeft.peft.tuners.bottleneck.model import BottleneckModel
from minipeft.peft.tuners.bottleneck.op import BottleneckAdapterFn, bottleneck_adapter

register_peft_method(name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="adapter_")

__all__ = ["BottleneckAdapterFn", "BottleneckConfig", "BottleneckLayer", "BottleneckModel", "bottleneck_adapter"]
