"""`modules_to_save`: a module trained in full for one adapter, as a copy, so the base stays untouched."""

from __future__ import annotations

import copy

from minipeft.nn.module import Module, ModuleDict


class ModulesToSaveWrapper(Module):
    """Keeps the frozen `original_module` and one trainable copy per adapter (`modules_to_save.<name>`)."""

    def __init__(self, original_module: Module):
        self.original_module = original_module
        self.modules_to_save = ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False

    def update(self, name: str) -> None:
        copy_ = copy.deepcopy(self.original_module)
        copy_.unfreeze()
        self.modules_to_save[name] = copy_
        if self.active_adapter is None:
            self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.modules_to_save.keys()), None)

    def forward(self, *args, **kwargs):
        name = self.active_adapter
        if self.disable_adapters or name is None or name not in self.modules_to_save:
            return self.original_module(*args, **kwargs)
        return self.modules_to_save[name](*args, **kwargs)

    def __getattr__(self, attr):
        # reached only when normal lookup fails: let callers read e.g. `.weight` of the wrapped module
        if attr in ("original_module", "modules_to_save", "__deepcopy__", "__setstate__"):
            raise AttributeError(attr)
        return getattr(self.original_module, attr)
