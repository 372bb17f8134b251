"""`BaseTunerLayer`: what every method's layer shares, as Hugging Face PEFT's `BaseTunerLayer` does.

A tuner layer wraps one base module (never copied) as `base_layer` and keeps each adapter's own
trainable weights in dicts keyed by adapter name. The attributes that hold them are named in
`adapter_layer_names` (LoRA: `("lora_A", "lora_B")`); per-adapter settings that are not weights
(LoRA's scaling and dropout) are dicts named in `other_param_names`. From those two lists the shared
code can find, freeze, save, load and delete any method's adapters without knowing its math.
"""

from __future__ import annotations

from minipeft.nn.module import Module, ModuleDict


class BaseTunerLayer(Module):
    """A base module plus named adapters; subclasses write `update_layer` and `forward` (and merge, if they can)."""

    adapter_layer_names: tuple[str, ...] = ()   # attributes (ModuleDict / ParameterDict) of per-adapter weights
    other_param_names: tuple[str, ...] = ()     # attributes (dict) of per-adapter settings
    mergeable: bool = False                     # can the adapter be folded into base_layer's weights?

    def __init__(self, base_layer: Module):
        self.base_layer = base_layer
        for slot in self.adapter_layer_names:
            setattr(self, slot, ModuleDict())
        for name in self.other_param_names:
            setattr(self, name, {})
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self.disable_adapters = False

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters this layer holds, in the order they were added."""
        return getattr(self, self.adapter_layer_names[0]).keys()

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def get_base_layer(self) -> Module:
        return self.base_layer

    @property
    def base_dtype(self):
        """The float dtype the base layer computes in, which an adapter's weights should follow: its weight's dtype,
        or `compute_dtype` for a quantized base (a Linear4bit's `weight` holds uint8 codes)."""
        base = self.base_layer
        return getattr(base, "compute_dtype", None) or base.weight.dtype

    def adapter_modules(self, name: str) -> list[Module | object]:
        """Adapter `name`'s weights on this layer: the Module or Parameter held in each slot."""
        return [getattr(self, slot)[name] for slot in self.adapter_layer_names if name in getattr(self, slot)]

    def set_adapter(self, name: str | None) -> None:
        """Route this layer through adapter `name` (None, or an adapter this layer lacks: the base alone)."""
        self.active_adapter = name if name in self.adapters else None

    def update_layer(self, adapter_name: str, config, key: str) -> None:
        """Add adapter `adapter_name` as `config` describes; `key` is this module's path (for per-layer patterns)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement update_layer()")

    def merge(self, name: str | None = None) -> None:
        raise TypeError(f"{type(self).__name__} cannot be merged into its base layer: the method adds computation "
                        "that no change of the base weights reproduces; keep the adapter unmerged")

    def unmerge(self) -> None:
        raise TypeError(f"{type(self).__name__} cannot be merged, so there is nothing to unmerge")

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name`'s weights and settings from this layer."""
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge() before deleting it")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; it holds {self.adapters}")
        for slot in self.adapter_layer_names:
            holder = getattr(self, slot)
            if name in holder:
                del holder[name]
        for other in self.other_param_names:
            getattr(self, other).pop(name, None)
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.adapters), None)

    def _check_new(self, name: str) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer; delete_adapter({name!r}) first")

