"""`IA3Config`, named and shaped like Hugging Face PEFT's, saved as adapter_config.json with peft_type "IA3"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.nn.module import Module
from minipeft.peft.config import ConfigError, PeftConfig, check_field, check_regex, check_target_fields, is_str_list
from minipeft.peft.tuners.targets import default_for

# Hugging Face PEFT's defaults by model_type (peft/utils/constants.py, TRANSFORMERS_MODELS_TO_IA3_*), used when
# target_modules / feedforward_modules are None: the keys, the values and the MLP's inner activation, which is the
# input of the MLP's output projection (GPT: fc2's input gelu(fc1(x)); Llama: down_proj's input silu(gate) * up).
DEFAULT_TARGETS = {"minipeft-gpt": ["k_proj", "v_proj", "fc2"], "llama": ["k_proj", "v_proj", "down_proj"]}
DEFAULT_FEEDFORWARD = {"minipeft-gpt": ["fc2"], "llama": ["down_proj"]}


@dataclass
class IA3Config(PeftConfig):
    """(IA)^3: a learned vector rescales each targeted Linear's output, or, for feedforward modules, its input.

    As in Hugging Face PEFT: a target in `feedforward_modules` has its INPUT scaled, l of shape (1, in)
    (for fc2 that input is the MLP's inner activation); any other target has its OUTPUT scaled, l of shape
    (out, 1) (for k_proj and v_proj: the keys and the values).

    Left None, both are filled in when the adapter is injected, from the model's `config.model_type`, as Hugging
    Face does (so the saved adapter_config.json names the modules): on the mini GPT k_proj, v_proj, fc2 (fc2
    feedforward), on a Llama k_proj, v_proj, down_proj (down_proj feedforward).
    """

    PEFT_TYPE: ClassVar[str] = "IA3"

    target_modules: list[str] | str | None = None        # names, one regex, or "all-linear"; None: the model's
    #                                                      default (DEFAULT_TARGETS), filled in by get_peft_model
    feedforward_modules: list[str] | str | None = None   # targets whose input is scaled (a subset); None: the
    #                                                      model's default (DEFAULT_FEEDFORWARD) among the targets
    fan_in_fan_out: bool = False                         # GPT-2 Conv1D weights stored (in, out): not here
    init_ia3_weights: bool = True                        # True: l = 1 (the model starts as the base); False: N(0, 1)
    layers_to_transform: list[int] | int | None = None   # only these blocks (None: all); not in HF's IA3Config
    modules_to_save: list[str] | None = None             # extra modules trained in full and saved (copied)

    def __post_init__(self):
        super().__post_init__()
        check_target_fields(self)
        if self.feedforward_modules is not None:
            self.check_feedforward()
        check_field(self, "fan_in_fan_out", self.fan_in_fan_out is False,
                    "False (minipeft's Linear stores W as (out, in), so there is nothing to transpose)")
        check_field(self, "init_ia3_weights", isinstance(self.init_ia3_weights, bool), "True or False")

    def check_feedforward(self) -> None:
        """feedforward_modules: names or one regex; names must be targets too (Hugging Face's subset check)."""
        ff = self.feedforward_modules
        check_field(self, "feedforward_modules", isinstance(ff, str) or is_str_list(ff),
                    "None, a list of module names, or one regex string")
        if isinstance(ff, str):
            check_regex(self, "feedforward_modules", ff)
            return
        self.feedforward_modules = list(ff)
        if isinstance(self.target_modules, list):
            outside = [f for f in ff if f not in self.target_modules]
            if outside:
                raise ConfigError(f"IA3Config.feedforward_modules {ff!r} must be a subset of target_modules "
                                  f"{self.target_modules!r}; {outside} are not targets: add them to "
                                  "target_modules or remove them from feedforward_modules")

    def fill_defaults(self, model: Module) -> None:
        """Set target_modules / feedforward_modules left None to the defaults for `model`'s model_type.

        The feedforward default keeps only the modules that are targets (as a regex when target_modules is one),
        so the filled config states exactly which targets scale their input, as Hugging Face's does.
        """
        if self.target_modules is None:
            self.target_modules = default_for(DEFAULT_TARGETS, model, "IA3Config.target_modules")
        if self.feedforward_modules is None:
            ff = default_for(DEFAULT_FEEDFORWARD, model, "IA3Config.feedforward_modules")
            self.feedforward_modules = (rf"(.*\.)?({'|'.join(ff)})" if isinstance(self.target_modules, str) else
                                        [t for t in self.target_modules if t in ff])
        self.check_feedforward()
