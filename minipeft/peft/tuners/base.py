"""`BaseTuner`: what every PEFT method shares at the model level, as Hugging Face PEFT's `BaseTuner` does.

A method subclasses it and declares its layer classes and target types; its hooks have defaults: `_targets`
(which modules, and what each one's adapter needs from there), `_create_and_replace` (wrap the module at a
path with the layer and call its update_layer), plus optional extras; everything else lives here once: injecting,
freezing the base, the adapter registry (add, set, delete, enable, disable), merging where the method
allows it, and the names each adapter's weights have on disk. The user's model is kept as `.model`
(so parameter paths read `base_model.model.<module path>` inside a PeftModel, as in PEFT) and is
never copied: only the targeted modules are swapped for wrappers that hold the original.
"""

from __future__ import annotations

import weakref
from typing import ClassVar

from minipeft.nn.module import Module, ModuleDict, Parameter
from minipeft.peft.config import PeftConfig
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper
from minipeft.peft.tuners.targets import find_targets, matches, pattern_value, warn_unmatched_patterns

MODULES_TO_SAVE = "modules_to_save"

# The live tuner that holds each model. Wrapped layers show PeftModel that a model is taken; a method that wraps
# none (soft prompts) leaves no trace in the model, so every tuner registers here and a second one is refused.
_HOLDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class BaseTuner(Module):
    """The user's model (`.model`) with adapters of one method injected; subclasses set the class fields."""

    # set by register_peft_method
    peft_type: ClassVar[str] = ""                            # e.g. "LORA"
    prefix: ClassVar[str] = ""                               # every adapter slot name starts with it ("lora_")
    config_cls: ClassVar[type[PeftConfig]] = PeftConfig
    # set by the method
    layer_classes: ClassVar[tuple[type[BaseTunerLayer], ...]] = ()  # the layers it injects
    target_types: ClassVar[tuple[type[Module], ...]] = ()     # module types `target_modules` may name
    tuner_slot_names: ClassVar[tuple[str, ...]] = ()          # per-adapter ModuleDicts on the tuner itself
    mergeable: ClassVar[bool] = False                         # can adapters be folded into the base weights?
    pattern_fields: ClassVar[dict[str, tuple[str, str]]] = {}  # update_layer argument -> (pattern field, field)

    def __init__(self, model: Module, config: PeftConfig, adapter_name: str):
        holder = _HOLDERS.get(model)
        if holder is not None and holder() is not None:
            raise ValueError("this model already holds adapter layers or soft prompts (another PeftModel wraps it); "
                             "add adapters through that PeftModel's add_adapter(), or unload() it first")
        self.model = model
        for slot in self.tuner_slot_names:
            setattr(self, slot, ModuleDict())
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter: str | None = adapter_name
        self.unloaded_by: str | None = None   # "merge_and_unload()" or "unload()" once the adapters are gone
        self.inject_adapter(adapter_name, config)
        _HOLDERS[model] = weakref.ref(self)

    # ---- what a method writes (each has a default) -------------------------------------------------
    def _targets(self, config: PeftConfig) -> dict[str, dict]:
        """{path: per-module values for update_layer} of the modules to wrap, each checked before any is wrapped: by
        default every module `config.target_modules` names, with the value each `pattern_fields` entry gives there
        (the pattern's first key that matches the path, else the config's field: Hugging Face's rule)."""
        paths = find_targets(self.model, config.target_modules, getattr(config, "layers_to_transform", None),
                             allowed=self.target_types + self.layer_classes, method=self.peft_type,
                             skip_inside=(BaseTunerLayer, ModulesToSaveWrapper))
        warn_unmatched_patterns(config, tuple(p for p, _ in self.pattern_fields.values()), paths)
        return {path: {arg: pattern_value(getattr(config, pattern), path, getattr(config, field))
                       for arg, (pattern, field) in self.pattern_fields.items()} for path in paths}

    def _create_and_replace(self, config: PeftConfig, adapter_name: str, target: Module, path: str,
                            **per_module) -> None:
        """Give the module at `path` adapter `adapter_name`: wrap it in the method's layer unless it is one already
        (a second adapter joins the first's wrapper), then add the adapter to the layer."""
        if not isinstance(target, self.layer_classes):
            target = self._new_layer(target, path)
            self.model.set_submodule(path, target)
        target.update_layer(adapter_name, config, **per_module)

    def _new_layer(self, target: Module, path: str) -> BaseTunerLayer:
        """The method's layer around base module `target`: layer_classes[0] by default."""
        return self.layer_classes[0](target)

    def _mark_extra_trainable(self, adapter_name: str, config: PeftConfig) -> None:
        """Unfreeze anything beyond the adapter's own weights (LoRA's `bias` option); nothing by default."""

    def _extra_saved_parameters(self, adapter_name: str, config: PeftConfig) -> list[str]:
        """Names (relative to this tuner) of base parameters the adapter trains and saves; none by default."""
        return []

    def trains_base_parameters(self) -> list[str]:
        """The adapters that train parameters of the base model itself (LoRA's bias option), changed in place."""
        return [n for n, c in self.peft_config.items() if self._extra_saved_parameters(n, c)]

    # ---- injection ---------------------------------------------------------------------------------
    def inject_adapter(self, name: str, config: PeftConfig) -> None:
        """Add adapter `name` as `config` says: wrap every target, add modules_to_save copies, register it."""
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        if not isinstance(name, str) or not name or any(c in name for c in "./\\"):
            # a dot would split the parameter path; a slash would put save_pretrained's subfolder outside the folder
            raise ValueError(f"adapter name must be a non-empty string without dots or slashes, such as 'default', "
                             f"got {name!r}")
        self._check_loaded("add_adapter()")
        if name in self.peft_config:
            raise ValueError(f"adapter {name!r} already exists; pick another name or delete_adapter({name!r})")
        if self.merged:
            raise RuntimeError("cannot add an adapter while another is merged; call unmerge_adapter() first")
        self._inject(name, config)
        for target in getattr(config, "modules_to_save", None) or []:
            self._wrap_module_to_save(target, name)
        self.peft_config[name] = config
        self.set_adapter(self.active_adapter if self.active_adapter in self.peft_config else name)

    def _inject(self, name: str, config: PeftConfig) -> None:
        """Wrap every target module (methods without wrapped layers, the soft prompts, override this)."""
        for path, per_module in self._targets(config).items():
            self._create_and_replace(config, name, self.model.get_submodule(path), path, **per_module)

    def _wrap_module_to_save(self, target: str, name: str) -> None:
        found = [p for p, m in self.model.named_modules()
                 if p and matches(p, [target]) and f".{MODULES_TO_SAVE}." not in p and ".original_module" not in p]
        if not found:
            raise ValueError(f"modules_to_save: {target!r} matched no module")
        for path in found:
            m = self.model.get_submodule(path)
            if not isinstance(m, ModulesToSaveWrapper):
                m = ModulesToSaveWrapper(m)
                self.model.set_submodule(path, m)
            m.update(name)

    def tuner_layers(self) -> list[BaseTunerLayer]:
        return [m for _, m in self.model.named_modules() if isinstance(m, BaseTunerLayer)]

    def saved_modules(self) -> list[ModulesToSaveWrapper]:
        return [m for _, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    # ---- which parameters belong to an adapter, and train ------------------------------------------
    def adapter_slot_names(self) -> tuple[str, ...]:
        """Every attribute name under which this method keeps per-adapter weights (plus modules_to_save)."""
        slots = [s for cls in self.layer_classes for s in cls.adapter_layer_names]
        return (*dict.fromkeys([*slots, *self.tuner_slot_names]), MODULES_TO_SAVE)

    def adapter_state_keys(self, name: str) -> dict[str, str]:
        """{key on disk: live parameter name}, both relative to this tuner, for everything adapter `name` owns.

        As Hugging Face PEFT names them: the adapter name right after its slot is dropped
        (`model.blocks.0.attn.q_proj.lora_A.default.weight` -> `...q_proj.lora_A.weight`), and a
        modules_to_save copy is saved under its module's own path (`...ln_f.modules_to_save.default.weight`
        -> `...ln_f.weight`).
        """
        slots = self.adapter_slot_names()
        keys: dict[str, str] = {}
        extra = set(self._extra_saved_parameters(name, self.peft_config[name]))
        for live, _ in self.named_parameters():
            dotted = f".{live}."
            slot = next((s for s in slots if f".{s}.{name}." in dotted), None)
            if slot == MODULES_TO_SAVE:
                disk = live.replace(f".{MODULES_TO_SAVE}.{name}.", ".", 1)
            elif slot is not None:
                disk = dotted.replace(f".{slot}.{name}.", f".{slot}.", 1)[1:-1]
            elif live in extra:
                disk = live
            else:
                continue
            if disk in keys:
                raise ValueError(f"adapter {name!r}: parameters {keys[disk]!r} and {live!r} would both be saved as "
                                 f"{disk!r}; rename the adapter")
            keys[disk] = live
        return keys

    def adapter_file_keys(self, name: str) -> dict[str, str]:
        """{key in adapter_model.safetensors: live parameter name (relative to this tuner)} for adapter `name`.

        PEFT's layout, `base_model.` + adapter_state_keys' disk name; a method that Hugging Face saves under
        another key overrides this (soft prompts: `prompt_embeddings`). Loading fills exactly these parameters.
        """
        return {f"base_model.{disk}": live for disk, live in self.adapter_state_keys(name).items()}

    def adapter_file_arrays(self, name: str) -> dict:
        """The arrays save_pretrained writes for adapter `name`, keyed as on disk: its live weights, unless the
        method saves another form than it trains (prefix tuning folds its MLP into plain prefixes)."""
        params = dict(self.named_parameters())
        return {disk: params[live].data for disk, live in self.adapter_file_keys(name).items()}

    def adapter_file_extras(self, name: str) -> dict:
        """Arrays adapter `name` keeps in its file that are not parameters, keyed as on disk (sparse fine-tuning's
        fixed indices); a method with any also adds them to adapter_file_arrays. None by default."""
        return {}

    def load_file_extras(self, name: str, arrays: dict) -> None:
        """Take adapter_file_extras' arrays back from a file (keys and shapes already checked, as NumPy arrays)."""
        if arrays:
            raise NotImplementedError(f"{type(self).__name__} declares file arrays {sorted(arrays)[:3]} but does not "
                                      "implement load_file_extras()")

    @property
    def virtual_positions(self) -> int:
        """Context positions the active adapter puts in front of every input (soft prompts, prefix entries)."""
        return 0

    def adapter_parameters(self, name: str) -> dict[str, Parameter]:
        """Adapter `name`'s parameters by live name (relative to this tuner)."""
        params = dict(self.named_parameters())
        return {live: params[live] for live in self.adapter_state_keys(name).values()}

    def mark_trainable(self) -> None:
        """Freeze everything, then unfreeze the active adapter's weights (and the method's extras).

        An adapter whose config says inference_mode (loaded with is_trainable=False, or built so) stays frozen,
        as in Hugging Face PEFT, also when set_adapter() makes it the active one again."""
        self.freeze()
        name = self.active_adapter
        if name is None or self.peft_config[name].inference_mode:
            return
        for p in self.adapter_parameters(name).values():
            p.requires_grad = True
        self._mark_extra_trainable(name, self.peft_config[name])

    # ---- adapter management ------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        return any(m.merged for m in self.tuner_layers())

    def _check_loaded(self, what: str) -> None:
        """Refuse adapter work once merge_and_unload()/unload() took the adapters out (the base model changed)."""
        if self.unloaded_by is None:
            return
        merged = self.unloaded_by == "merge_and_unload()"
        raise RuntimeError(
            f"{what}: this PeftModel's adapters were removed by {self.unloaded_by}"
            + (", which folded the active one into the base weights; there is nothing to unmerge" if merged else "")
            + ". Work on the model it returned: wrap it anew with get_peft_model(model, config) (its fingerprint "
            "is then taken from the weights it has now), or save it with save_checkpoint")

    def set_adapter(self, name: str) -> None:
        """Route every wrapped layer through adapter `name` and make only it trainable."""
        self._check_loaded("set_adapter()")
        if name not in self.peft_config:
            raise KeyError(f"no adapter named {name!r}; adapters are {sorted(self.peft_config)}")
        if self.merged:
            raise RuntimeError("cannot switch adapters while one is merged; call unmerge_adapter() first")
        for m in self.tuner_layers():
            m.set_adapter(name)
        for w in self.saved_modules():
            w.active_adapter = name if name in w.modules_to_save else None
        self.active_adapter = name
        self.mark_trainable()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` everywhere; another adapter becomes active if this one was."""
        self._check_loaded("delete_adapter()")
        if name not in self.peft_config:
            raise KeyError(f"no adapter named {name!r}; adapters are {sorted(self.peft_config)}")
        for m in self.tuner_layers():
            if name in m.adapters:
                m.delete_adapter(name)
        for w in self.saved_modules():
            if name in w.modules_to_save:
                w.delete_adapter(name)
        for slot in self.tuner_slot_names:
            if name in getattr(self, slot):
                del getattr(self, slot)[name]
        del self.peft_config[name]
        if self.active_adapter == name:
            remaining = sorted(self.peft_config)
            self.active_adapter = None
            if remaining:
                self.set_adapter(remaining[0])

    def set_adapters_disabled(self, disabled: bool) -> None:
        for m in [*self.tuner_layers(), *self.saved_modules()]:
            m.disable_adapters = disabled

    def enable_adapter_layers(self) -> None:
        """Route through the active adapter again (after disable_adapter_layers)."""
        self.set_adapters_disabled(False)

    def disable_adapter_layers(self) -> None:
        """Compute the base model's output; the adapters stay in place, untouched."""
        self.set_adapters_disabled(True)

    # ---- merging -----------------------------------------------------------------------------------
    def _check_mergeable(self, what: str) -> None:
        if not self.mergeable:
            raise TypeError(f"{what}: {self.peft_type} adapters cannot be merged into the base weights (the method "
                            "adds computation no weight change reproduces); keep the PeftModel for inference, or "
                            "use unload() to get the base model back without the adapters")

    def merge(self) -> None:
        """Fold the active adapter into the base weights of every layer that holds it."""
        self._check_mergeable("merge_adapter()")
        self._check_loaded("merge_adapter()")
        for m in self.tuner_layers():
            if m.active_adapter is not None and not m.merged:
                m.merge(m.active_adapter)

    def unmerge(self) -> None:
        self._check_mergeable("unmerge_adapter()")
        self._check_loaded("unmerge_adapter()")
        layers = [m for m in self.tuner_layers() if m.merged]
        if not layers:
            raise RuntimeError("unmerge_adapter(): no adapter is merged")
        for m in layers:
            m.unmerge()

    def merge_and_unload(self) -> Module:
        """Fold the active adapter into the base weights (unless already merged); put the plain modules back."""
        self._check_mergeable("merge_and_unload()")
        self._check_loaded("merge_and_unload()")
        self.merge()
        return self._unwrap(keep_saved_copy=True, by="merge_and_unload()")

    def unload(self) -> Module:
        """Remove every adapter without merging: the base model as it was."""
        self._check_loaded("unload()")
        if self.merged:
            self.unmerge()
        return self._unwrap(keep_saved_copy=False, by="unload()")

    def _unwrap(self, keep_saved_copy: bool, by: str) -> Module:
        """Put the plain modules back and forget every adapter: this tuner is then spent (see _check_loaded)."""
        for path, m in list(self.model.named_modules()):
            if isinstance(m, BaseTunerLayer):
                self.model.set_submodule(path, m.get_base_layer())
            elif isinstance(m, ModulesToSaveWrapper):
                copy = m.modules_to_save[m.active_adapter] if keep_saved_copy and m.active_adapter else None
                self.model.set_submodule(path, copy or m.original_module)
        for slot in self.tuner_slot_names:
            setattr(self, slot, ModuleDict())
        self.peft_config, self.active_adapter, self.unloaded_by = {}, None, by
        _HOLDERS.pop(self.model, None)
        return self.model

    # ---- running the model -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def hidden_states(self, *args, **kwargs):
        return self.model.hidden_states(*args, **kwargs)

    def head(self, h):
        return self.model.head(h)
