"""`IA3Model`: (IA)^3 on the tuner contract: wrap each targeted Linear in an `IA3Linear`, scaling its input when
it is a feedforward module and its output otherwise (Hugging Face PEFT's rule)."""

from __future__ import annotations

from minipeft.nn.layers import Linear
from minipeft.nn.module import Module
from minipeft.peft.config import ConfigError
from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.ia3.config import IA3Config
from minipeft.peft.tuners.ia3.layer import IA3Linear
from minipeft.peft.tuners.targets import matches


class IA3Model(BaseTuner):
    """The user's model with (IA)^3 vectors on the Linear layers `target_modules` names."""

    layer_classes = (IA3Linear,)
    target_types = (Linear,)
    mergeable = True

    def _targets(self, config: IA3Config) -> dict[str, dict]:
        """The targets (the model's defaults filled into a config that left them None, as HF does), each scaling its
        input if it is a feedforward module; a feedforward_modules name must name a target (HF checks name lists;
        this also covers regex targets)."""
        config.fill_defaults(self.model)
        paths = list(super()._targets(config))
        ff = config.feedforward_modules
        unused = [] if isinstance(ff, str) else [f for f in ff if not any(matches(p, [f]) for p in paths)]
        if unused:
            raise ConfigError(f"IA3Config.feedforward_modules {unused} name no module that target_modules="
                              f"{config.target_modules!r} wraps (targets: {paths}); feedforward modules must be "
                              "targets too")
        return {p: dict(is_feedforward=matches(p, ff)) for p in paths}

    def _new_layer(self, target: Module, path: str) -> IA3Linear:
        if target.weight.dtype.kind != "f":   # the op rescales W itself, which here holds 4-bit codes
            raise TypeError(f"IA3 cannot wrap {path!r}: it is a {type(target).__name__} holding "
                            f"{target.weight.dtype} codes (a 4-bit base), and (IA)^3 on a quantized base is not "
                            "implemented; use LoRA on it (QLoRA), or apply IA3 to the float base model")
        return IA3Linear(target)
