"""What `finetune` trains: a recipe of the comparison table, or any registered method with the user's config.

`--method` takes a recipe's key (lora-all, ia3, ...) or a registered peft_type (lora, ia3, a student's own method
registered with register_peft_method and brought in with --import). `--config FILE.json` gives the config in
adapter_config.json's form (any method's); `--r`, `--alpha` and `--targets` set those fields on top of it. All of
it is checked before any work starts.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from minipeft.nn.module import Module
from minipeft.peft import PEFT_TYPE_TO_CONFIG, PeftConfig
from minipeft.peft.config import INFORMATIONAL_FIELDS
from minipeft.peft.registry import config_from_dict
from minipeft.quant import BitsAndBytesConfig
from minipeft.workshop.llm.hub import MODELS as LLM_MODELS
from minipeft.workshop.tutorial_base import MINI

# option -> the config field it sets, in the order tried (LoRA's alpha is lora_alpha)
OVERRIDES = {"r": ("r",), "alpha": ("lora_alpha", "alpha"), "targets": ("target_modules",)}


def import_methods(specs: list[str] | None) -> None:
    """Import each module (a dotted name, or a .py file) so the methods it registers reach the command line."""
    for spec in specs or ():
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise ValueError(f"--import {spec}: no such file; pass a .py file that calls register_peft_method, "
                                 "or a module name")
            loaded = sys.modules.get(path.stem)
            if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
                continue                                        # already imported: registering twice would fail
            spec_ = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[path.stem] = module
            spec_.loader.exec_module(module)
        else:
            try:
                importlib.import_module(spec)
            except ImportError as e:
                raise ValueError(f"--import {spec}: {e}; pass a module on the Python path, or a .py file") from None


def read_config_file(path: Path) -> PeftConfig:
    """A method's config from an adapter_config.json-style file (peft_type says which method)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} is not valid JSON ({e}); write it as adapter_config.json is written, e.g. "
                         '{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}') from None
    if not isinstance(d, dict) or "peft_type" not in d:
        raise ValueError(f"--config {path} must be a JSON object with a peft_type (one of "
                         f"{sorted(PEFT_TYPE_TO_CONFIG)}), e.g. {{\"peft_type\": \"LORA\", \"r\": 4}}")
    d = {k: v for k, v in d.items() if k not in INFORMATIONAL_FIELDS and k != "inference_mode"}
    try:
        return config_from_dict(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--config {path}: {e}") from None


@dataclass
class Plan:
    """The method a finetune run trains, resolved from the arguments before any work."""

    name: str                                  # as the run record and generate/merge know it
    recipe: object | None                      # a compare.Recipe, or None for a registered peft_type
    config: PeftConfig | None                  # from --config or the peft_type's defaults; None: the recipe's
    overrides: dict                            # config field -> value (--r, --alpha, --targets)
    quantization: BitsAndBytesConfig | None    # quantize the base first (QLoRA)
    lr: float

    def build_config(self, base: Module) -> PeftConfig | None:
        """The config to train (None: the recipe builds its model itself, and takes no override)."""
        config = self.config
        if config is None and self.recipe is not None and self.recipe.config is not None:
            config = self.recipe.config(base)
        if config is None:
            return None
        return with_overrides(config, self.overrides, self.name)


def with_overrides(config: PeftConfig, overrides: dict, method: str) -> PeftConfig:
    """`config` with --r / --alpha / --targets set (checked by the config's own __post_init__)."""
    names = {f.name for f in dataclasses.fields(config) if f.init}
    fields = {}
    for option, value in overrides.items():
        field = next((f for f in OVERRIDES[option] if f in names), None)
        if field is None:
            raise ValueError(f"--{option} sets {' or '.join(OVERRIDES[option])}, which {type(config).__name__} "
                             f"(--method {method}) does not have; its fields are {sorted(names)}: use --config "
                             "FILE.json for them")
        fields[field] = value
    try:
        return dataclasses.replace(config, **fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--method {method}: {e}") from None


def plan_method(args) -> Plan:
    """Resolve --method, --config, --r/--alpha/--targets and --lr into a Plan, or raise ValueError saying what to
    pass instead."""
    from minipeft.workshop.compare import METHOD_RECIPES, recipe_rate  # noqa: PLC0415 (imports every method)

    import_methods(args.imports)
    config = read_config_file(args.config) if args.config is not None else None
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    method = args.method or (config.peft_type.lower() if config is not None else None)
    types = sorted(t.lower() for t in PEFT_TYPE_TO_CONFIG)
    if method is None:
        raise ValueError(f"pass --method: a recipe ({', '.join(METHOD_RECIPES)}) or a registered peft_type "
                         f"({', '.join(types)}) with --config FILE.json")
    recipe = METHOD_RECIPES.get(method)
    if recipe is not None:
        if (config is not None or overrides) and recipe.config is None:
            raise ValueError(f"--method {method} builds its model itself and takes no --config, --r, --alpha or "
                             "--targets; pick a registered peft_type (e.g. --method lora) to set them")
        if overrides and config is None:     # the fields checked now on a tiny GPT: the recipe's config class
            from minipeft.nn import GPT, GPTConfig  # noqa: PLC0415

            with_overrides(recipe.config(GPT(GPTConfig.from_preset("test"))), overrides, method)
        elif overrides:
            with_overrides(config, overrides, method)
        base = getattr(args, "base", None)                 # a named LLM takes the rates measured on it
        lr = args.lr or recipe_rate(method, base if base in LLM_MODELS else MINI)[0]
        return Plan(method, recipe, config, overrides, recipe.quantization, lr)
    if method.upper() not in PEFT_TYPE_TO_CONFIG:
        raise ValueError(f"--method {method!r} is neither a recipe ({', '.join(METHOD_RECIPES)}) nor a registered "
                         f"peft_type ({', '.join(types)}); a method of your own reaches the command line with --import "
                         "your_module.py (the file that calls register_peft_method)")
    cls = PEFT_TYPE_TO_CONFIG[method.upper()]
    if config is not None and config.peft_type != cls.PEFT_TYPE:
        raise ValueError(f"--method {method} does not match --config {args.config}, whose peft_type is "
                         f"{config.peft_type!r}; pass one method")
    if config is None:
        try:
            config = cls()
        except (ValueError, TypeError) as e:
            raise ValueError(f"--method {method} has no usable default config ({e}); pass --config FILE.json with "
                             "its fields") from None
    with_overrides(config, overrides, method)              # checks the fields now, before any work
    if args.lr is None:
        raise ValueError(f"--method {method} has no recipe with a learning rate; pass --lr (e.g. --lr 1e-2 for "
                         "LoRA-like methods)")
    return Plan(method, None, config, overrides, None, args.lr)
