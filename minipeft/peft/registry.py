"""`register_peft_method`: the one line that makes a method known, as in Hugging Face PEFT.

It ties a `peft_type` ("LORA") to its config class, its tuner class and its parameter prefix
("lora_"), which is all that get_peft_model, PeftModel, adapter files and the counts need. Two more things
a method declares in its own folder travel with it: its contract case (tests/test_tuner_contract.py runs the
shared contract on it) and, optionally, its recipes for the comparison and the command line, as plain data
(`ContractCase`, `RecipeSpec`, below), so the book imports nothing of the tools that read them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from minipeft.peft.config import ConfigError, PeftConfig

PEFT_TYPE_TO_CONFIG: dict[str, type[PeftConfig]] = {}
PEFT_TYPE_TO_TUNER: dict[str, type] = {}
PEFT_TYPE_TO_PREFIX: dict[str, str] = {}
PEFT_TYPE_TO_CONTRACT: dict[str, dict] = {}    # peft_type -> {model family: ContractCase}
PEFT_TYPE_TO_RECIPES: dict[str, dict] = {}     # peft_type -> {recipe key: RecipeSpec}


def register_peft_method(*, name: str, config_cls: type[PeftConfig], model_cls: type, prefix: str | None = None,
                         contract: dict[str, ContractCase] | None = None,
                         recipes: dict[str, RecipeSpec] | None = None) -> None:
    """Register method `name` (e.g. "lora": peft_type "LORA", prefix "lora_" unless given), with its contract case
    for each test model family ("gpt", "llama") and its recipes (optional)."""
    peft_type = name.upper()
    prefix = prefix if prefix is not None else name.lower() + "_"
    if peft_type in PEFT_TYPE_TO_TUNER:
        raise ValueError(f"a PEFT method named {name!r} is already registered")
    if config_cls.PEFT_TYPE != peft_type:
        raise ValueError(f"{config_cls.__name__}.PEFT_TYPE is {config_cls.PEFT_TYPE!r}; registering it as {name!r} "
                         f"needs {peft_type!r}")
    model_cls.peft_type, model_cls.prefix, model_cls.config_cls = peft_type, prefix, config_cls
    slots = [s for cls in model_cls.layer_classes for s in cls.adapter_layer_names] + list(model_cls.tuner_slot_names)
    if not slots:
        raise ValueError(f"{model_cls.__name__} declares no adapter slots (layer_classes' adapter_layer_names or "
                         "tuner_slot_names): the shared code could not find its weights")
    bad = [s for s in slots if not s.startswith(prefix)]
    if bad:
        raise ValueError(f"{model_cls.__name__}'s adapter slots {bad} do not start with the prefix {prefix!r}; "
                         "name them so (e.g. 'lora_A') so every parameter of the method carries it")
    PEFT_TYPE_TO_CONFIG[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER[peft_type] = model_cls
    PEFT_TYPE_TO_PREFIX[peft_type] = prefix
    PEFT_TYPE_TO_CONTRACT[peft_type] = dict(contract or {})
    PEFT_TYPE_TO_RECIPES[peft_type] = dict(recipes or {})


def config_from_dict(d: dict) -> PeftConfig:
    """The right config class for d["peft_type"], built from d."""
    if not isinstance(d, dict):
        raise ConfigError(f"an adapter config must be a dict (a JSON object), got a {type(d).__name__}")
    kind = d.get("peft_type")
    if not isinstance(kind, str) or kind not in PEFT_TYPE_TO_CONFIG:
        raise ConfigError(f"unknown peft_type {kind!r} in adapter config; minipeft implements "
                          f"{sorted(PEFT_TYPE_TO_CONFIG)}")
    try:
        return PEFT_TYPE_TO_CONFIG[kind].from_dict(d)
    except ConfigError as e:
        fits = [t for t, cls in PEFT_TYPE_TO_CONFIG.items() if t != kind and _builds(cls, {**d, "peft_type": t})]
        if not fits:
            raise
        raise ConfigError(f"peft_type is {kind!r}, but the fields are those of a {' or '.join(map(repr, fits))} "
                          f"config; was the peft_type edited? Set \"peft_type\": {fits[0]!r} if the adapter was "
                          f"trained with that method, else save it again from a {PEFT_TYPE_TO_CONFIG[kind].__name__}"
                          f" ({e})") from e


def _builds(cls: type[PeftConfig], d: dict) -> bool:
    """Whether config class `cls` accepts the fields of `d` (naming no field it does not know)."""
    try:
        cls.from_dict(d)
    except (ConfigError, TypeError, ValueError):
        return False
    return True


class ContractCase(NamedTuple):
    """A method's case of the tuner contract on one family's test model: a config for it, and the closed-form
    count of the parameters that config trains, from the base model's shapes."""

    config: Callable[[Any, list], PeftConfig]   # (base model, a few (ids, targets) batches) -> config
    trainable: Callable[[Any], int]             # base model -> the trainable count the config must give


class RecipeSpec(NamedTuple):
    """How the comparison (python -m minipeft compare, tutorial 11) and `finetune --method` train with this method."""

    label: str                                  # the table's row name
    lr: float                                   # AdamW's peak learning rate
    lr_source: str                              # where that rate comes from (a tutorial, a probe)
    family: str                                 # "reparameterized", "additive", "selective", "soft prompt"
    config: Callable[[Any, list], PeftConfig]   # (base model, training batches) -> the adapter config
    batches: int = 0                            # how many batches config reads (sparse's scores); 0: none
    quantization: Any = None                    # a BitsAndBytesConfig: quantize the base first (QLoRA)
