"""`LoraModel`: injects `LoraLinear` layers into a model by name and manages their adapters."""

from __future__ import annotations

from minipeft.nn.layers import Linear
from minipeft.nn.module import Module
from minipeft.peft.config import LoraConfig
from minipeft.peft.lora_layer import LoraLinear
from minipeft.peft.modules_to_save import ModulesToSaveWrapper
from minipeft.peft.targets import find_targets, matches


class LoraModel(Module):
    """Holds the user's model as `.model` (so parameter paths read `base_model.model.…` as in PEFT)."""

    prefix = "lora_"

    def __init__(self, model: Module, config: LoraConfig, adapter_name: str):
        self.model = model
        self.peft_config: dict[str, LoraConfig] = {}
        self.active_adapter = adapter_name
        self.inject_adapter(adapter_name, config)

    # ---- injection ---------------------------------------------------------------------------------
    def inject_adapter(self, name: str, config: LoraConfig) -> None:
        """Wrap every targeted Linear in a LoraLinear (or reuse the wrapper) and add adapter `name`."""
        if not isinstance(config, LoraConfig):
            raise TypeError(f"LoraModel needs a LoraConfig, got {type(config).__name__}")
        if name in self.peft_config:
            raise ValueError(f"adapter {name!r} already exists; pick another name or delete_adapter({name!r})")
        if any(m.merged for m in self.lora_layers()):
            raise RuntimeError("cannot add an adapter while another is merged; call unmerge_adapter() first")
        paths = find_targets(self.model, config.target_modules, config.layers_to_transform,
                             allowed=(Linear, LoraLinear))
        paths = [p for p in paths if ".lora_A." not in p + "." and ".lora_B." not in p + "."]
        for path in paths:
            layer = self.model.get_submodule(path)
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                self.model.set_submodule(path, layer)
            layer.update_layer(name, config.r, config.lora_alpha, config.lora_dropout,
                               config.init_lora_weights, config.use_rslora)
        for target in config.modules_to_save or []:
            self._wrap_module_to_save(target, name)
        self.peft_config[name] = config
        self.set_adapter(self.active_adapter if self.active_adapter in self.peft_config else name)

    def _wrap_module_to_save(self, target: str, name: str) -> None:
        found = [p for p, m in self.model.named_modules()
                 if p and matches(p, [target]) and ".modules_to_save." not in p and ".original_module" not in p]
        if not found:
            raise ValueError(f"modules_to_save: {target!r} matched no module")
        for path in found:
            m = self.model.get_submodule(path)
            if not isinstance(m, ModulesToSaveWrapper):
                m = ModulesToSaveWrapper(m)
                self.model.set_submodule(path, m)
            m.update(name)

    def lora_layers(self) -> list[LoraLinear]:
        return [m for _, m in self.model.named_modules() if isinstance(m, LoraLinear)]

    def saved_modules(self) -> list[ModulesToSaveWrapper]:
        return [m for _, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    # ---- which parameters train --------------------------------------------------------------------
    def mark_trainable(self) -> None:
        """Freeze everything, then unfreeze the active adapter (and biases per config.bias)."""
        name, config = self.active_adapter, self.peft_config[self.active_adapter]
        self.model.freeze()
        for layer in self.lora_layers():
            if name in layer.lora_A:
                layer.lora_A[name].unfreeze()
                layer.lora_B[name].unfreeze()
                if config.bias == "lora_only" and layer.base_layer.bias is not None:
                    layer.base_layer.bias.requires_grad = True
        if config.bias == "all":
            for pname, p in self.model.named_parameters():
                if pname.endswith(".bias") and ".lora_" not in pname:
                    p.requires_grad = True
        for wrapper in self.saved_modules():
            if name in wrapper.modules_to_save:
                wrapper.modules_to_save[name].unfreeze()

    # ---- adapter management ------------------------------------------------------------------------
    def set_adapter(self, name: str) -> None:
        """Route every wrapped layer through adapter `name` and make only it trainable."""
        if name not in self.peft_config:
            raise KeyError(f"no adapter named {name!r}; adapters are {sorted(self.peft_config)}")
        layers = self.lora_layers()
        if any(m.merged for m in layers):
            raise RuntimeError("cannot switch adapters while one is merged; call unmerge_adapter() first")
        for m in layers:
            m.active_adapter = name if name in m.lora_A else None
        for w in self.saved_modules():
            w.active_adapter = name if name in w.modules_to_save else None
        self.active_adapter = name
        self.mark_trainable()

    def delete_adapter(self, name: str) -> None:
        if name not in self.peft_config:
            raise KeyError(f"no adapter named {name!r}; adapters are {sorted(self.peft_config)}")
        for m in self.lora_layers():
            if name in m.lora_A:
                m.delete_adapter(name)
        for w in self.saved_modules():
            if name in w.modules_to_save:
                w.delete_adapter(name)
        del self.peft_config[name]
        if self.active_adapter == name:
            remaining = sorted(self.peft_config)
            self.active_adapter = remaining[0] if remaining else None
            if remaining:
                self.set_adapter(remaining[0])

    def set_adapters_disabled(self, disabled: bool) -> None:
        for m in self.lora_layers() + self.saved_modules():
            m.disable_adapters = disabled

    # ---- merging -----------------------------------------------------------------------------------
    def merge(self) -> None:
        for m in self.lora_layers():
            if m.active_adapter is not None:
                m.merge(m.active_adapter)

    def unmerge(self) -> None:
        layers = [m for m in self.lora_layers() if m.merged]
        if not layers:
            raise RuntimeError("unmerge_adapter(): no adapter is merged")
        for m in layers:
            m.unmerge()

    def merge_and_unload(self) -> Module:
        """Fold the active adapter into W0 (unless merge_adapter() already did); put plain Linear layers back."""
        for m in self.lora_layers():
            if m.active_adapter is not None and not m.merged:
                m.merge(m.active_adapter)
        for path, m in list(self.model.named_modules()):
            if isinstance(m, LoraLinear):
                self.model.set_submodule(path, m.base_layer)
            elif isinstance(m, ModulesToSaveWrapper):
                keep = m.modules_to_save[m.active_adapter] if m.active_adapter else m.original_module
                self.model.set_submodule(path, keep)
        return self.model

    def unload(self) -> Module:
        """Remove every adapter without merging: the base model as it was."""
        if any(m.merged for m in self.lora_layers()):
            self.unmerge()
        for path, m in list(self.model.named_modules()):
            if isinstance(m, LoraLinear):
                self.model.set_submodule(path, m.base_layer)
            elif isinstance(m, ModulesToSaveWrapper):
                self.model.set_submodule(path, m.original_module)
        return self.model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def hidden_states(self, *args, **kwargs):
        return self.model.hidden_states(*args, **kwargs)

    def head(self, h):
        return self.model.head(h)
