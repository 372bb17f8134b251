"""`PeftConfig`: the fields every method's config shares, and reading adapter_config.json written by us or by
Hugging Face PEFT without silently dropping anything that would change the model's output."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from minipeft.errors import ConfigError

# Fields Hugging Face PEFT (or we) write that carry no math here: provenance, versions, runtime placement.
INFORMATIONAL_FIELDS = frozenset({
    "base_model_name_or_path", "revision", "auto_mapping", "peft_version", "runtime_config",
    "base_model_fingerprint", "base_model_config",
})


# Hugging Face PEFT config fields no method here implements, with the values that mean "not used" (the methods'
# fields of those names, where one implements it, take precedence). from_dict() accepts a file that sets one to such a
# value and refuses any other by name, since loading it would give other outputs.
HF_OFF_VALUES: dict[str, tuple] = {
    "use_dora": (False,), "fan_in_fan_out": (False,), "lora_bias": (False,), "use_qalora": (False,),
    "loftq_config": ({}, None), "megatron_config": (None,), "layer_replication": (None,),
    "layers_pattern": (None, [], "blocks", "layers", ["blocks"], ["layers"]),   # the lists targets.layer_index reads
    "exclude_modules": (None, []),
    "trainable_token_indices": (None,), "eva_config": (None,), "corda_config": (None,),
    "target_parameters": (None, []), "alora_invocation_tokens": (None,), "arrow_config": (None,),
    "ensure_weight_tying": (False,), "megatron_core": ("megatron.core", None), "qalora_group_size": (16, None),
    "tokenizer_kwargs": (None, {}),
}


def check_field(config, name: str, ok: bool, allowed: str) -> None:
    """Raise a ConfigError naming the config class, the field, its value and what is allowed, unless ok."""
    if not ok:
        raise ConfigError(f"{type(config).__name__}.{name} must be {allowed}, got {getattr(config, name)!r}")


def is_number(v) -> bool:
    """A finite int or float (not a bool, not a string that spells a number)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_str_list(v) -> bool:
    """A list (or tuple) of strings."""
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def is_count(v, low: int = 1) -> bool:
    """An int >= low (a rank, a width, a number of tokens), not a bool."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def is_index(v) -> bool:
    """An int >= 0 (a block index), not a bool."""
    return is_count(v, 0)


def check_regex(config, what: str, pattern) -> None:
    """Raise a ConfigError naming `what` unless `pattern` is a str that compiles as a regex."""
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ConfigError(f"{type(config).__name__}.{what} {pattern!r} is not a valid regex: {e}") from None


def check_target_fields(config) -> None:
    """Check (and normalize) the targeting fields a method's config has, as every method means them.

    target_modules: module names, one regex, or "all-linear" (None: a method's default for the model, filled in
    at injection); layers_to_transform: a block index or a list of them (an int becomes [int]); modules_to_save:
    None or module names.
    """
    if getattr(config, "target_modules", None) is not None:
        t = config.target_modules
        check_field(config, "target_modules", isinstance(t, str) or is_str_list(t),
                    "a list of module names, one regex string, or 'all-linear'")
        if isinstance(t, str):
            check_regex(config, "target_modules", t)
        else:
            check_field(config, "target_modules", len(t) > 0, "a non-empty list of module names, e.g. ['q_proj']")
            config.target_modules = list(t)
    if hasattr(config, "layers_to_transform"):
        if is_index(config.layers_to_transform):
            config.layers_to_transform = [config.layers_to_transform]
        layers = config.layers_to_transform
        check_field(config, "layers_to_transform", layers is None or (
            isinstance(layers, (list, tuple)) and all(map(is_index, layers))),
            "None, a block index (an int >= 0) or a list of them")
    if hasattr(config, "modules_to_save"):
        check_field(config, "modules_to_save", config.modules_to_save is None or is_str_list(config.modules_to_save),
                    "None or a list of module names")


def check_patterns(config, **checks) -> None:
    """Check pattern fields (LoRA's rank_pattern, alpha_pattern): each a dict {module regex: value}, every key a valid
    regex and every value passing its check; `checks` maps a field to (ok(value), what is allowed)."""
    for name, (ok, allowed) in checks.items():
        pattern = getattr(config, name)
        if not isinstance(pattern, dict):
            raise ConfigError(f"{type(config).__name__}.{name} must be a dict {{module regex: value}}, got {pattern!r}")
        for key, value in pattern.items():
            check_regex(config, f"{name} key", key)
            if not ok(value):
                raise ConfigError(f"{type(config).__name__}.{name}[{key!r}] = {value!r}; values must be {allowed}")


@dataclass
class PeftConfig:
    """Fields every method shares; a subclass sets PEFT_TYPE, adds its fields and validates them in __post_init__."""

    PEFT_TYPE: ClassVar[str] = ""

    peft_type: str = field(default="", init=False)   # which method, e.g. "LORA" (set from PEFT_TYPE)
    task_type: str | None = "CAUSAL_LM"              # the only task our GPT serves
    inference_mode: bool = False                     # True when loaded for inference only

    def __post_init__(self):
        self.peft_type = self.PEFT_TYPE
        if self.task_type not in (None, "CAUSAL_LM"):
            raise ConfigError(f"{type(self).__name__}.task_type must be 'CAUSAL_LM' (the only task a GPT here "
                              f"serves), got {self.task_type!r}")
        check_field(self, "inference_mode", isinstance(self.inference_mode, bool), "True or False")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """The fields as JSON, in field order: dict fields keep their keys' order, which rank_pattern and
        alpha_pattern need (the first key that matches a module wins)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> PeftConfig:
        """Rebuild from a dict (e.g. adapter_config.json, ours or Hugging Face's).

        Hugging Face compatibility happens here, at the file boundary, not in the constructor: informational fields
        are ignored; a Hugging Face field minipeft does not implement (HF_OFF_VALUES) is accepted only at a value that
        means "off", otherwise refused with its name. A field we do not know at all (each Hugging Face
        PEFT release adds some, written as null) is accepted when it is off (null, false or empty), with one
        warning naming them all, as Hugging Face's own loader drops unknown keys; at any other value it is refused.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}.from_dict needs a dict of fields, got a {type(d).__name__}")
        if d.get("peft_type", cls.PEFT_TYPE) != cls.PEFT_TYPE:
            raise ConfigError(f"{cls.__name__}.from_dict: peft_type is {d.get('peft_type')!r}, "
                              f"expected {cls.PEFT_TYPE!r}")
        known = {f.name for f in fields(cls) if f.init}
        ignored = []
        for key, value in d.items():
            if key in known or key in INFORMATIONAL_FIELDS or key == "peft_type":
                continue
            if key in HF_OFF_VALUES:
                off = HF_OFF_VALUES[key]
                if not any(value == v for v in off):
                    raise ConfigError(f"{cls.__name__} sets {key}={value!r}, a Hugging Face PEFT option minipeft does "
                                      f"not implement for {cls.PEFT_TYPE} (accepted only when off: "
                                      f"{' or '.join(repr(v) for v in off)}); train the adapter without it")
                continue
            if not is_off(value):
                raise ConfigError(f"adapter config has a field {key!r} (= {value!r}) that {cls.__name__} does not "
                                  f"know; its fields are {sorted(known)}. minipeft accepts an unknown field only "
                                  "when it is off (null, false or empty): train the adapter without that option")
            ignored.append(key)
        config = cls(**{k: v for k, v in d.items() if k in known})
        if ignored:
            warnings.warn(f"{cls.__name__}: ignoring fields minipeft does not know, all off (null, false or empty) "
                          f"in this adapter config: {', '.join(sorted(ignored))}", UserWarning, stacklevel=3)
        return config


def is_off(value) -> bool:
    """A value that means "option not used": None, False, or an empty string, list or dict."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)
