"""What selective and sparse fine-tuning share: a layer that runs its base module's own op with some parameters
substituted by the active adapter's (a trained copy of a whole tensor, or the base tensor with a few entries
replaced), and the op each supported module computes with.
"""

from __future__ import annotations

from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.nn.layers import Embedding, LayerNorm, Linear
from minipeft.nn.llama import RMSNorm
from minipeft.nn.module import Module, ParameterDict
from minipeft.peft.tuners.base_layer import BaseTunerLayer


def forward_with(base: Module, weight: Tensor | None, bias: Tensor | None, x) -> Tensor:
    """What `base` computes on x, with `weight` and `bias` in place of its own (same op, same math)."""
    if isinstance(base, Linear):
        return ops.linear(x, weight, bias)                  # x W^T + b
    if isinstance(base, LayerNorm):
        return ops.layer_norm(x, weight, bias, base.eps)    # (x - mean) / std * w + b
    if isinstance(base, RMSNorm):
        return ops.rms_norm(x, weight, base.eps)            # x / rms(x) * w
    if isinstance(base, Embedding):
        return ops.embedding(x, weight)                     # W[ids]
    raise TypeError(f"cannot substitute the parameters of a {type(base).__name__}; "
                    "selective and sparse fine-tuning wrap Linear, LayerNorm, RMSNorm and Embedding modules")


class SubstitutionLayer(BaseTunerLayer):
    """A base module run with some parameters substituted by the active adapter's; subclasses say how.

    `weight` and `bias` read as the values the forward uses (so code that reads `module.weight`, like the
    tied LM head, sees the adapter's), and other attributes fall through to the base module. The first of
    `other_param_names` maps each adapter to the base parameters it replaces (names, or a dict keyed by them).
    """

    slot_type = ParameterDict
    mergeable = True
    merges_stack = False                        # merging one adapter replaces base values, kept to restore exactly

    def __init__(self, base_layer: Module):
        super().__init__(base_layer)
        self._merged_originals: dict[str, object] = {}   # pname -> what merge() replaced in the base

    @property
    def adapters(self) -> list[str]:
        return list(getattr(self, self.other_param_names[0]))   # an adapter may hold only a bias: not the first slot

    def trains(self, name: str) -> tuple[str, ...]:
        """The base parameters adapter `name` replaces on this layer."""
        return tuple(getattr(self, self.other_param_names[0])[name])

    def substitute(self, name: str, pname: str) -> Tensor:
        """The tensor that replaces base parameter `pname` under adapter `name`."""
        raise NotImplementedError

    def effective(self, pname: str) -> Tensor | None:
        """The value of parameter `pname` the forward uses now: the active adapter's, else the base's."""
        name = self.active_adapter
        if self.disable_adapters or self.merged or name is None or pname not in self.trains(name):
            return getattr(self.base_layer, pname, None)
        return self.substitute(name, pname)

    @property
    def weight(self) -> Tensor | None:
        return self.effective("weight")

    @property
    def bias(self) -> Tensor | None:
        return self.effective("bias")

    def forward(self, x) -> Tensor:
        return forward_with(self.base_layer, self.weight, self.bias, x)

    def __getattr__(self, attr):
        # reached only when normal lookup fails: `in_features`, `eps`, ... of the wrapped module
        if attr.startswith("__") or attr == "base_layer" or "base_layer" not in vars(self):
            raise AttributeError(attr)
        return getattr(self.base_layer, attr)
