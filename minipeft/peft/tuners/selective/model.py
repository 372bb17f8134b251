"""`SelectiveModel`: selective fine-tuning on the tuner contract: wrap each module that holds a selected
parameter in a `SelectiveLayer` and give it the adapter's copies."""

from __future__ import annotations

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.selection import SUPPORTED, select_parameters
from minipeft.peft.tuners.selective.config import SelectiveConfig
from minipeft.peft.tuners.selective.layer import SelectiveLayer


class SelectiveModel(BaseTuner):
    """The user's model with the parameters a SelectiveConfig selects trained as per-adapter copies."""

    layer_classes = (SelectiveLayer,)
    target_types = SUPPORTED
    mergeable = True

    def _targets(self, config: SelectiveConfig) -> dict[str, dict]:
        """Every module holding a selected parameter, with the names of those it holds (`pnames`)."""
        return {path: dict(pnames=pnames) for path, pnames in select_parameters(self.model, config,
                                                                               self.peft_type).items()}
