"""Method configs, named and shaped like Hugging Face PEFT's (`LoraConfig`, ...), saved as adapter_config.json."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields


@dataclass
class PeftConfig:
    """Fields every method shares; subclasses add their own and set `peft_type`."""

    peft_type: str = field(default="", init=False)   # which method, e.g. "LORA"
    task_type: str = "CAUSAL_LM"                     # the only task our GPT serves
    inference_mode: bool = False                     # True when loaded for inference only

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> PeftConfig:
        """Rebuild from a dict (e.g. adapter_config.json); unknown keys from other tools are ignored."""
        known = {f.name for f in fields(cls) if f.init}
        if d.get("peft_type", cls.peft_type_name()) != cls.peft_type_name():
            raise ValueError(f"{cls.__name__}.from_dict: peft_type is {d.get('peft_type')!r}, "
                             f"expected {cls.peft_type_name()!r}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def peft_type_name(cls) -> str:
        return ""


@dataclass
class LoraConfig(PeftConfig):
    """LoRA: W = W0 + (lora_alpha / r) * B A on every targeted Linear (Hu et al., 2021)."""

    r: int = 8                                       # rank of the update B A
    lora_alpha: float = 8                            # scale numerator: s = lora_alpha / r
    lora_dropout: float = 0.0                        # dropout on the adapter's input only
    target_modules: list[str] | str | None = None    # names ("q_proj") or one regex over module paths
    bias: str = "none"                               # "none" | "all" | "lora_only": which biases train
    use_rslora: bool = False                         # s = lora_alpha / sqrt(r) (rank-stabilized LoRA)
    init_lora_weights: bool | str = True             # True: A kaiming-uniform, B=0; "gaussian"; False: B random
    layers_to_transform: list[int] | int | None = None  # only these block indices (None: all)
    modules_to_save: list[str] | None = None         # extra modules trained in full and saved (copied)

    def __post_init__(self):
        self.peft_type = "LORA"
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraConfig.r must be an int >= 1, got {self.r!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"LoraConfig.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(f"LoraConfig.init_lora_weights must be True, False or 'gaussian', "
                             f"got {self.init_lora_weights!r}")
        if self.target_modules is None:
            self.target_modules = ["q_proj", "v_proj"]   # the original paper's choice
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ValueError(f"LoraConfig.target_modules regex {self.target_modules!r} is invalid: {e}") from e
        else:
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("LoraConfig.target_modules is empty; name at least one module, e.g. ['q_proj']")
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    @classmethod
    def peft_type_name(cls) -> str:
        return "LORA"

    @property
    def scaling(self) -> float:
        """s = alpha / r, or alpha / sqrt(r) with use_rslora."""
        return self.lora_alpha / (self.r**0.5 if self.use_rslora else self.r)


CONFIG_CLASSES: dict[str, type[PeftConfig]] = {"LORA": LoraConfig}


def config_from_dict(d: dict) -> PeftConfig:
    """The right config class for d["peft_type"]."""
    kind = d.get("peft_type")
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"unknown peft_type {kind!r} in adapter config; known: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[kind].from_dict(d)
