"""`LoraConfig`, named and shaped like Hugging Face PEFT's, saved as adapter_config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from minipeft.peft.config import PeftConfig, check_field, check_patterns, check_target_fields, is_count, is_number


@dataclass
class LoraConfig(PeftConfig):
    """LoRA: W = W0 + (lora_alpha / r) * B A on every targeted Linear (Hu et al., 2021)."""

    PEFT_TYPE: ClassVar[str] = "LORA"

    r: int = 8                                       # rank of the update B A
    lora_alpha: float = 8                            # scale numerator: s = lora_alpha / r
    lora_dropout: float = 0.0                        # dropout on the adapter's input only
    target_modules: list[str] | str | None = None    # names ("q_proj"), one regex over module paths, or "all-linear"
    bias: str = "none"                               # "none" | "all" | "lora_only": which biases train
    use_rslora: bool = False                         # s = lora_alpha / sqrt(r) (rank-stabilized LoRA)
    init_lora_weights: bool | str = True             # True: A kaiming-uniform, B=0; "gaussian"; False: B random
    layers_to_transform: list[int] | int | None = None  # only these block indices (None: all); also with a regex
    #   target_modules, where both filters apply (Hugging Face refuses that pair; minipeft's files have used it)
    modules_to_save: list[str] | None = None         # extra modules trained in full and saved (copied)
    rank_pattern: dict[str, int] = field(default_factory=dict)      # module regex -> r there (HF's meaning)
    alpha_pattern: dict[str, float] = field(default_factory=dict)   # module regex -> lora_alpha there

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "r", is_count(self.r), "an int >= 1")
        check_field(self, "lora_alpha", _is_alpha(self.lora_alpha), "a finite number > 0")
        check_field(self, "lora_dropout", is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
                    "a number in [0, 1)")
        check_field(self, "bias", self.bias in ("none", "all", "lora_only"), "'none', 'all' or 'lora_only'")
        check_field(self, "use_rslora", isinstance(self.use_rslora, bool), "True or False")
        check_field(self, "init_lora_weights", any(self.init_lora_weights is v for v in (True, False))
                    or self.init_lora_weights == "gaussian", "True, False or 'gaussian'")
        if self.target_modules is None:
            self.target_modules = ["q_proj", "v_proj"]   # the original paper's choice
        check_target_fields(self)
        check_patterns(self, rank_pattern=(is_count, "ints >= 1"), alpha_pattern=(_is_alpha, "numbers > 0"))


def _is_alpha(v) -> bool:
    return is_number(v) and v > 0
