"""`BottleneckModel`: bottleneck adapters on the tuner contract: follow each targeted Linear with a
`BottleneckLayer`. Not mergeable, and the refusal says why."""

from __future__ import annotations

from minipeft.nn.layers import Linear
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.bottleneck.config import BottleneckConfig
from minipeft.peft.tuners.bottleneck.layer import NOT_MERGEABLE, BottleneckLayer


class BottleneckModel(BaseTuner):
    """The user's model with a bottleneck adapter after every Linear that `target_modules` names."""

    layer_classes = (BottleneckLayer,)
    target_types = (Linear,)
    mergeable = False

    def _targets(self, config: BottleneckConfig) -> dict[str, dict]:
        """Place the adapters where the config's layout says in this model (if it names no modules); each target's
        bottleneck width m = config.size_for(d), every one checked (1 <= m <= d) before any module is wrapped."""
        config.fill_targets(self.model)
        return {p: dict(bottleneck_size=config.size_for(self.model.get_submodule(p).out_features, p))
                for p in super()._targets(config)}

    def _check_mergeable(self, what: str) -> None:
        raise TypeError(f"{what}: {self.peft_type} adapters cannot be merged into the base weights: {NOT_MERGEABLE}. "
                        "Keep the PeftModel for inference (each adapter costs its two small products per token; "
                        "tutorial 06 measures it), or unload() to get the base model back without the adapters")
