"""The PEFT methods, one package each, and what they share (BaseTuner, BaseTunerLayer, targets, modules_to_save).

Importing this package imports every method package found in this folder, and each registers itself (see
minipeft.peft.registry): adding a method is adding its folder, with no list to edit. `METHOD_PACKAGES` holds
them by folder name; minipeft.peft exports each one's `__all__`.
"""

import importlib
import pkgutil

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper

METHOD_PACKAGES = {m.name: importlib.import_module(f"{__name__}.{m.name}")
                   for m in pkgutil.iter_modules(__path__) if m.ispkg}

__all__ = ["METHOD_PACKAGES", "BaseTuner", "BaseTunerLayer", "ModulesToSaveWrapper"]
