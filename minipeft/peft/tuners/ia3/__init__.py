"""(IA)^3 (Liu et al., 2022): learned vectors rescale the keys, the values and the MLP's inner activation. One folder:
config, op, layer, model, and the one line that registers the method."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.ia3.config import IA3Config
from minipeft.peft.tuners.ia3.layer import IA3Linear
from minipeft.peft.tuners.ia3.model import IA3Model
from minipeft.peft.tuners.ia3.op import IA3LinearFn, ia3_linear

register_peft_method(name="ia3", config_cls=IA3Config, model_cls=IA3Model, prefix="ia3_")

__all__ = ["IA3Config", "IA3Linear", "IA3LinearFn", "IA3Model", "ia3_linear"]
