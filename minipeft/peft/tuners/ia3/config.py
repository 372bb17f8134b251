"""`IA3Config`, named and shaped like Hugging Face PEFT's, saved as adapter_config.json with peft_type "IA3"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import ConfigError, PeftConfig, check_field, check_regex, check_target_fields, is_str_list

DEFAULT_TARGETS = ["k_proj", "v_proj", "fc2"]   # the paper's choice: keys, values, the MLP's inner activation
DEFAULT_FEEDFORWARD = ["fc2"]                   # fc2's input IS the MLP's inner activation gelu(fc1(x))
FEEDFORWARD_REGEX = r"(.*\.)?fc2"               # the same, as a regex, when target_modules is one


@dataclass
class IA3Config(PeftConfig):
    """(IA)^3: a learned vector rescales each targeted Linear's output, or, for feedforward modules, its input.

    As in Hugging Face PEFT: a target in `feedforward_modules` has its INPUT scaled, l of shape (1, in)
    (for fc2 that input is the MLP's inner activation); any other target has its OUTPUT scaled, l of shape
    (out, 1) (for k_proj and v_proj: the keys and the values).
    """

    PEFT_TYPE: ClassVar[str] = "IA3"
    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple]] = {
        "exclude_modules": (None, []), "layers_pattern": (None, "blocks", ["blocks"], []),
    }

    target_modules: list[str] | str | None = None        # names, one regex, or "all-linear"; None: k, v, fc2
    feedforward_modules: list[str] | str | None = None   # targets whose input is scaled (a subset); None: fc2
    fan_in_fan_out: bool = False                         # GPT-2 Conv1D weights stored (in, out): not here
    init_ia3_weights: bool = True                        # True: l = 1 (the model starts as the base); False: N(0, 1)
    layers_to_transform: list[int] | int | None = None   # only these blocks (None: all); not in HF's IA3Config
    modules_to_save: list[str] | None = None             # extra modules trained in full and saved (copied)

    def __post_init__(self):
        super().__post_init__()
        if self.target_modules is None:
            self.target_modules = list(DEFAULT_TARGETS)
        check_target_fields(self)
        if self.feedforward_modules is None:
            # Hugging Face fills both from one table per model type; ours: fc2, wherever it is a target
            self.feedforward_modules = (FEEDFORWARD_REGEX if isinstance(self.target_modules, str) else
                                        [t for t in self.target_modules if t in DEFAULT_FEEDFORWARD])
        ff = self.feedforward_modules
        check_field(self, "feedforward_modules", isinstance(ff, str) or is_str_list(ff),
                    "None, a list of module names, or one regex string")
        if isinstance(ff, str):
            check_regex(self, "feedforward_modules", ff)
        else:
            self.feedforward_modules = list(ff)
            if not isinstance(self.target_modules, str):
                outside = [f for f in ff if f not in self.target_modules]
                if outside:    # Hugging Face's check: a feedforward module must also be a target
                    raise ConfigError(f"IA3Config.feedforward_modules {ff!r} must be a subset of target_modules "
                                      f"{self.target_modules!r}; {outside} are not targets: add them to "
                                      "target_modules or remove them from feedforward_modules")
        check_field(self, "fan_in_fan_out", self.fan_in_fan_out is False,
                    "False (minipeft's Linear stores W as (out, in), so there is nothing to transpose)")
        check_field(self, "init_ia3_weights", isinstance(self.init_ia3_weights, bool), "True or False")
