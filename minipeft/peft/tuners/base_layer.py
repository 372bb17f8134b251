"""`BaseTunerLayer`: what every method's layer shares, as Hugging Face PEFT's `BaseTunerLayer` does.

A tuner layer wraps one base module (never copied) as `base_layer` and keeps each adapter's own
trainable weights in dicts keyed by adapter name. The attributes that hold them are named in
`adapter_layer_names` (LoRA: `("lora_A", "lora_B")`); per-adapter settings that are not weights
(LoRA's scaling and dropout) are dicts named in `other_param_names`. From those two lists the shared
code can find, freeze, save, load and delete any method's adapters without knowing its math.

One contract for every method: `update_layer(adapter_name, config, **per_module)` adds an adapter (the
method writes `create_adapter`, which makes its weights; the name check and the first adapter becoming the
active one happen here), and `merge()` / `unmerge()` keep the merge bookkeeping and its messages here
while the method says only what merging means for it: `get_delta_weight(name)` for a method whose merge
adds a matrix to W0 (LoRA), or `merge_into_base(name)` / `unmerge_from_base()` for one that changes the base
another way ((IA)^3 rescales it, selective fine-tuning substitutes whole tensors).
"""

from __future__ import annotations

from minipeft.autograd import no_grad
from minipeft.nn.module import Module, ModuleDict


class BaseTunerLayer(Module):
    """A base module plus named adapters; subclasses write `create_adapter` and `forward` (and merging, if they can)."""

    adapter_layer_names: tuple[str, ...] = ()   # attributes of per-adapter weights, each a slot_type by adapter name
    slot_type: type = ModuleDict                # ModuleDict (an adapter's weights are modules) or ParameterDict
    other_param_names: tuple[str, ...] = ()     # attributes (dict) of per-adapter settings
    mergeable: bool = False                     # can the adapter be folded into base_layer's weights?
    why_not_mergeable = "the method adds computation that no change of the base weights reproduces"  # if it cannot
    merges_stack: bool = True                   # may a second adapter be merged on top of a merged one?

    def __init__(self, base_layer: Module):
        self.base_layer = base_layer
        for slot in self.adapter_layer_names:
            setattr(self, slot, self.slot_type())
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
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

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

    # ---- adding an adapter -------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, **per_module) -> None:
        """Add adapter `adapter_name` as `config` describes; `per_module` holds what the tuner worked out for this
        module (LoRA's rank from rank_pattern, sparse fine-tuning's entry counts). The first adapter becomes active."""
        if adapter_name in self.adapters:
            raise ValueError(f"adapter {adapter_name!r} already exists on this layer; delete_adapter({adapter_name!r}) "
                             "first")
        self.create_adapter(adapter_name, config, **per_module)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def create_adapter(self, adapter_name: str, config, **per_module) -> None:
        """Make adapter `adapter_name`'s weights (in self.base_dtype) and settings: what each method writes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement create_adapter()")

    # ---- merging: the bookkeeping here, the method's meaning in the three hooks below --------------
    def merge(self, adapter_name: str | None = None) -> None:
        """Fold adapter `adapter_name` (default: the active one) into the base layer. Merging one twice raises."""
        name = adapter_name or self.active_adapter
        if not self.mergeable:
            raise TypeError(f"{type(self).__name__} cannot be merged into its base layer: {self.why_not_mergeable}; "
                            "keep the adapter unmerged")
        if name in self.merged_adapters or (self.merged_adapters and not self.merges_stack):
            raise RuntimeError(f"adapter {self.merged_adapters[-1]!r} is already merged into this layer; call "
                               "unmerge() first")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; it holds {self.adapters}")
        with no_grad():
            self.merge_into_base(name)
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take every merged adapter out of the base layer again. Raises if none is merged."""
        if not self.mergeable:
            raise TypeError(f"{type(self).__name__} cannot be merged, so there is nothing to unmerge")
        if not self.merged_adapters:
            raise RuntimeError("unmerge(): no adapter is merged into this layer")
        with no_grad():
            self.unmerge_from_base()
        self.merged_adapters.clear()

    def get_delta_weight(self, adapter_name: str):
        """The (out, in) matrix adapter `adapter_name` adds to the base weight, for a method whose merge is additive."""
        raise NotImplementedError(f"{type(self).__name__} writes neither get_delta_weight() nor merge_into_base()")

    def merge_into_base(self, name: str) -> None:
        """merge()'s hook: W0 += get_delta_weight(name), unless the method merges another way."""
        self.base_layer.weight.data += self.get_delta_weight(name)

    def unmerge_from_base(self) -> None:
        """unmerge()'s hook: W0 -= get_delta_weight(name) for the merged adapters, last first (W0 back up to
        rounding); a method that kept the base's exact values while merged puts them back instead."""
        for name in reversed(self.merged_adapters):
            self.base_layer.weight.data -= self.get_delta_weight(name)

    # ---- removing an adapter -----------------------------------------------------------------------
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
