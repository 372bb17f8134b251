"""A method written outside the package, as coursework would: proof that the tuner contract is the whole job.

A parallel adapter (He et al., 2022): y = base(x) + s * relu(x D^T) U^T beside each targeted Linear, with
D (m, in) the down-projection and U (out, m) the up-projection. The ReLU makes it non-linear in x, so no
change of the base weight reproduces it: it is the contract tests' non-mergeable method. One config, one
layer, one tuner and one register line; everything else (injection, freezing, counts, files, fingerprint,
set/delete/disable) comes from the shared base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from minipeft import backend, ops
from minipeft.nn import Linear
from minipeft.peft import BaseTuner, BaseTunerLayer, ConfigError, PeftConfig, register_peft_method
from minipeft.peft.config import check_field, check_target_fields, is_number


@dataclass
class ParallelAdapterConfig(PeftConfig):
    """Parallel bottleneck adapters of width `bottleneck` beside the Linears `target_modules` names."""

    PEFT_TYPE: ClassVar[str] = "EXAMPLE_PARALLEL"

    bottleneck: int = 4                                                   # m, the adapter's hidden width
    scale: float = 1.0                                                    # s, multiplies the adapter's output
    target_modules: list[str] = field(default_factory=lambda: ["fc2"])   # Linear modules to put one beside
    layers_to_transform: list[int] | None = None                          # only these block indices

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ConfigError(f"ParallelAdapterConfig.bottleneck must be an int >= 1, got {self.bottleneck!r}")
        check_field(self, "scale", is_number(self.scale), "a finite number")
        check_target_fields(self)   # target_modules and layers_to_transform, as every method means them


class ParallelAdapterLayer(BaseTunerLayer):
    """base_layer(x) + s * relu(x D^T) U^T for the active adapter."""

    adapter_layer_names = ("example_down", "example_up")
    other_param_names = ("example_scale",)

    def create_adapter(self, name: str, config: ParallelAdapterConfig) -> None:
        base = self.base_layer
        down = Linear(base.in_features, config.bottleneck, bias=False)
        up = Linear(config.bottleneck, base.out_features, bias=False)
        up.weight.data = backend.xp().zeros(up.weight.shape, dtype=base.weight.dtype)  # starts as the identity
        down.weight.data = down.weight.data.astype(base.weight.dtype)
        self.example_down[name], self.example_up[name] = down, up
        self.example_scale[name] = config.scale

    def forward(self, x):
        y = self.base_layer(x)
        name = self.active_adapter
        if self.disable_adapters or name is None:
            return y
        h = ops.relu(self.example_down[name](x))
        return y + self.example_up[name](h) * self.example_scale[name]


class ParallelAdapterModel(BaseTuner):
    layer_classes = (ParallelAdapterLayer,)
    target_types = (Linear,)


register_peft_method(name="example_parallel", config_cls=ParallelAdapterConfig, model_cls=ParallelAdapterModel,
                     prefix="example_")
