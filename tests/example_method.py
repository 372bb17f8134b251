"""A complete PEFT method written as CONTRIBUTING.md says, in one file: proof that the tuner contract is the whole job.

A parallel adapter (He et al., 2022): y = base(x) + s * relu(x D^T) U^T beside each targeted Linear, with
D (m, in) the down-projection and U (out, m) the up-projection. The ReLU makes it non-linear in x, so no
change of the base weight reproduces it: it is the contract tests' non-mergeable method. An op with its
backward, a config, a layer, a tuner and one register call that also declares the method's contract case and
its recipe; everything else (injection, freezing, counts, files, fingerprint, set/delete/disable) comes from
the shared base.

The file is a method folder's whole content: saved as minipeft/peft/tuners/example_parallel/__init__.py it is
found, registered and exported like the methods that ship (tests/test_new_method.py does exactly that), and
imported from here (`--import tests/example_method.py`) it is a method registered from outside the package.
So it imports the pieces from the modules that define them, never from minipeft.peft, which is still being
imported while the tuners package finds its methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from minipeft import backend
from minipeft.autograd import Function, Tensor
from minipeft.nn.layers import Linear
from minipeft.ops._util import mm
from minipeft.peft.config import PeftConfig, check_field, check_target_fields, is_count, is_number
from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.targets import modules_named


# ---- op: the adapter's branch, forward and backward ----------------------------------------------------------------
class ParallelAdapterFn(Function):
    """y = s * relu(x D^T) U^T; x (..., k), D (m, k), U (d, m) -> (..., d)."""

    @staticmethod
    def forward(ctx, x, D, U, scale=1.0):
        s = x.dtype.type(scale)
        x2 = x.reshape(-1, x.shape[-1])                               # (N, k)
        h = mm(x2, D.T)                                               # (N, m) down-projection
        a = h * (h > 0)                                               # (N, m) relu
        ctx.save_for_backward(x2, h, a, D, U, s, x.shape)
        return (mm(a, U.T) * s).reshape(*x.shape[:-1], U.shape[0])    # (..., d)

    @staticmethod
    def backward(ctx, dout):
        # y = s a U^T with a = relu(h), h = x D^T, so
        #   dU = s dy^T a;  da = s dy U;  dh = da * (h > 0);  dD = dh^T x;  dx = dh D
        x2, h, a, D, U, s, xshape = ctx.saved
        nx, nD, nU = ctx.needs_input_grad
        dy = dout.reshape(-1, U.shape[0])                             # (N, d)
        dU = mm(dy.T, a) * s if nU else None                          # (d, m)
        dh = mm(dy, U) * s * (h > 0) if (nx or nD) else None          # (N, m)
        dD = mm(dh.T, x2) if nD else None                             # (m, k)
        dx = mm(dh, D).reshape(xshape) if nx else None                # (..., k)
        return dx, dD, dU


def parallel_adapter(x: Tensor, D: Tensor, U: Tensor, scale: float) -> Tensor:
    """s * relu(x D^T) U^T, the branch the layer adds to its base layer's output."""
    return ParallelAdapterFn.apply(x, D, U, scale=scale)


# ---- config ----------------------------------------------------------------------------------------------------------
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
        check_field(self, "bottleneck", is_count(self.bottleneck), "an int >= 1")
        check_field(self, "scale", is_number(self.scale), "a finite number")
        check_target_fields(self)   # target_modules and layers_to_transform, as every method means them


# ---- layer -----------------------------------------------------------------------------------------------------------
class ParallelAdapterLayer(BaseTunerLayer):
    """base_layer(x) + s * relu(x D^T) U^T for the active adapter."""

    adapter_layer_names = ("example_down", "example_up")
    other_param_names = ("example_scale",)
    why_not_mergeable = "the ReLU between D and U makes the branch non-linear in x"

    def create_adapter(self, adapter_name: str, config: ParallelAdapterConfig) -> None:
        """D kaiming-uniform, U zero (the model starts as the base), in the base's compute dtype (not a 4-bit
        base's uint8 codes)."""
        base, dt = self.base_layer, self.base_dtype
        down = Linear(base.in_features, config.bottleneck, bias=False)
        up = Linear(config.bottleneck, base.out_features, bias=False)
        down.weight.data = down.weight.data.astype(dt)
        up.weight.data = backend.xp().zeros(up.weight.shape, dtype=dt)
        self.example_down[adapter_name], self.example_up[adapter_name] = down, up
        self.example_scale[adapter_name] = config.scale

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        name = self.active_adapter
        if self.disable_adapters or name is None:
            return y
        return y + parallel_adapter(x, self.example_down[name].weight, self.example_up[name].weight,
                                    self.example_scale[name])


# ---- tuner -----------------------------------------------------------------------------------------------------------
class ParallelAdapterModel(BaseTuner):
    """The user's model with a parallel adapter beside every Linear that `target_modules` names."""

    layer_classes = (ParallelAdapterLayer,)
    target_types = (Linear,)


# ---- register: the method, its contract case per test model family, its recipe ---------------------------------------
def _case(target: str) -> ContractCase:
    """m (in + out) trainable numbers per targeted Linear, here m = 3."""
    return ContractCase(lambda base, batches: ParallelAdapterConfig(bottleneck=3, target_modules=[target]),
                        lambda base: sum(3 * (m.in_features + m.out_features) for m in modules_named(base, {target})))


register_peft_method(name="example_parallel", config_cls=ParallelAdapterConfig, model_cls=ParallelAdapterModel,
                     prefix="example_", contract={"gpt": _case("fc2"), "llama": _case("down_proj")},
                     recipes={"parallel": RecipeSpec("parallel adapter m=8", 1e-2, "not tuned: Bottleneck's rate",
                                                     "additive", lambda base, batches: ParallelAdapterConfig(
                                                         bottleneck=8))})

__all__ = ["ParallelAdapterConfig", "ParallelAdapterFn", "ParallelAdapterLayer", "ParallelAdapterModel",
           "parallel_adapter"]
