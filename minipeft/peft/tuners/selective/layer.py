"""`SelectiveLayer`: a base module whose selected parameters are replaced, per adapter, by trained copies.

Training base values in place (as BitFit is usually written, `requires_grad` on the biases) would change
the base model itself: a second task could not share it, and "disable the adapter" would have nothing to
go back to. Here each adapter holds a trainable copy of each tensor it selects, and the wrapped module's own
op runs with the copy in place of the original:

    y = op(x, weight', bias')      weight' = the adapter's copy if selected, else the base's weight

so the gradient, the AdamW state and the weight decay of the copy are exactly those in-place training
would give the original (same op, same values), while the original stays bit-identical. merge() writes the
copies into the base (keeping the originals, so unmerge() restores them exactly).

Tied embeddings: the GPT's head reads `wte.weight`. A wrapper's `weight` is a property returning the
active copy, so when the embedding table is selected the head and the lookup use the same trained tensor,
and its gradient is the sum of both paths, as for the tied original.
"""

from __future__ import annotations

from minipeft import ops
from minipeft.autograd import Tensor, no_grad
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
    tied LM head, sees the adapter's), and other attributes fall through to the base module.
    """

    def substitute(self, name: str, pname: str) -> Tensor:
        """The tensor that replaces base parameter `pname` under adapter `name`."""
        raise NotImplementedError

    def trains(self, name: str) -> tuple[str, ...]:
        """The base parameters adapter `name` replaces on this layer."""
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


class SelectiveLayer(SubstitutionLayer):
    """Per adapter, a trainable copy of each selected parameter: `selective_weight.<adapter>`, `selective_bias...`."""

    adapter_layer_names = ("selective_weight", "selective_bias")   # the copies (ParameterDicts by adapter)
    other_param_names = ("selective_params",)                      # adapter -> names of the parameters it trains
    mergeable = True

    def __init__(self, base_layer: Module):
        super().__init__(base_layer)
        self.selective_weight, self.selective_bias = ParameterDict(), ParameterDict()
        self._merged_originals: dict[str, object] = {}             # pname -> the base array merge() replaced

    @property
    def adapters(self) -> list[str]:
        return list(self.selective_params)   # an adapter may hold only a bias, so the first slot is not enough

    def trains(self, name: str) -> tuple[str, ...]:
        return self.selective_params[name]

    def substitute(self, name: str, pname: str) -> Tensor:
        return getattr(self, f"selective_{pname}")[name]

    def update_layer(self, name: str, pnames: list[str]) -> None:
        """Add adapter `name`: a copy of each base parameter in `pnames`, equal to it bit for bit."""
        self._check_new(name)
        for pname in pnames:
            original = getattr(self.base_layer, pname)
            getattr(self, f"selective_{pname}")[name] = type(original)(original.data.copy())
        self.selective_params[name] = tuple(pnames)
        if self.active_adapter is None:
            self.active_adapter = name

    def merge(self, name: str | None = None) -> None:
        """Write the adapter's copies into the base parameters (the originals kept, for unmerge)."""
        name = name or self.active_adapter
        if self.merged_adapters:
            raise RuntimeError(f"adapter {self.merged_adapters[0]!r} is already merged into this layer; "
                               "unmerge() first")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; it holds {self.adapters}")
        with no_grad():
            for pname in self.trains(name):
                base = getattr(self.base_layer, pname)
                self._merged_originals[pname] = base.data
                base.data = self.substitute(name, pname).data.copy()
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Put the original base values back, bit for bit."""
        if not self.merged_adapters:
            raise RuntimeError("unmerge(): no adapter is merged into this layer")
        for pname, data in self._merged_originals.items():
            getattr(self.base_layer, pname).data = data
        self._merged_originals.clear()
        self.merged_adapters.clear()

    def extra_repr(self) -> str:
        return f"{type(self.base_layer).__name__}, adapters={ {n: list(p) for n, p in self.selective_params.items()} }"
