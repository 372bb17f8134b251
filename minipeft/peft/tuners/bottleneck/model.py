"""`BottleneckModel`: bottleneck adapters on the tuner contract: follow each targeted Linear with a
`BottleneckLayer`. Not mergeable, and the refusal says why."""

from __future__ import annotations

from minipeft.nn.layers import Linear
from minipeft.nn.module import Module
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.bottleneck.config import BottleneckConfig
from minipeft.peft.tuners.bottleneck.layer import NOT_MERGEABLE, BottleneckLayer


class BottleneckModel(BaseTuner):
    """The user's model with a bottleneck adapter after every Linear that `target_modules` names."""

    layer_classes = (BottleneckLayer,)
    target_types = (Linear,)
    mergeable = False

    def _inject(self, name: str, config: BottleneckConfig) -> None:
        """Place the adapters where the config's layout says in this model (if it names no modules), then wrap."""
        config.fill_targets(self.model)
        super()._inject(name, config)

    def _check_targets(self, config: BottleneckConfig, paths: list[str]) -> None:
        """Every target's bottleneck width fits (1 <= m <= d) before any module is wrapped."""
        for path in paths:
            target = self.model.get_submodule(path)            # a Linear, or the wrapper of an earlier adapter
            config.size_for(target.out_features, path)

    def _create_and_replace(self, config: BottleneckConfig, adapter_name: str, target: Module, path: str) -> None:
        """Wrap the Linear at `path` (or reuse its wrapper) and add an adapter of width m = config.size_for(d)."""
        if not isinstance(target, BottleneckLayer):
            target = BottleneckLayer(target)
            self.model.set_submodule(path, target)
        target.update_layer(adapter_name, config.size_for(target.out_features, path), config.non_linearity)

    def _check_mergeable(self, what: str) -> None:
        raise TypeError(f"{what}: {self.peft_type} adapters cannot be merged into the base weights: {NOT_MERGEABLE}. "
                        "Keep the PeftModel for inference (each adapter costs its two small products per token; "
                        "tutorial 06 measures it), or unload() to get the base model back without the adapters")
