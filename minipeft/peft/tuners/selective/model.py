"""`SelectiveModel`: selective fine-tuning on the tuner contract: wrap each module that holds a selected
parameter in a `SelectiveLayer` and give it the adapter's copies."""

from __future__ import annotations

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.selective.config import SelectiveConfig
from minipeft.peft.tuners.selective.layer import SelectiveLayer
from minipeft.peft.tuners.selective.select import SUPPORTED, select_parameters


class SelectiveModel(BaseTuner):
    """The user's model with the parameters a SelectiveConfig selects trained as per-adapter copies."""

    layer_classes = (SelectiveLayer,)
    target_types = SUPPORTED
    mergeable = True

    def _inject(self, name: str, config: SelectiveConfig) -> None:
        for path, pnames in select_parameters(self.model, config, self.peft_type).items():
            self._create_and_replace(config, name, self.model.get_submodule(path), path, pnames)

    def _create_and_replace(self, config: SelectiveConfig, adapter_name: str, target, path: str,
                            pnames: list[str] | None = None) -> None:
        """Wrap the module at `path` (or reuse its wrapper) and add copies of its parameters `pnames`."""
        if not isinstance(target, SelectiveLayer):
            target = SelectiveLayer(target)
            self.model.set_submodule(path, target)
        if pnames is None:
            raise TypeError("SelectiveModel._create_and_replace needs pnames, the parameters to copy; "
                            "_inject computes them with select_parameters")
        target.update_layer(adapter_name, pnames)
