"""Every fine-tuning method the comparison runs, as its own tutorial trains it: config and learning rate.

`METHOD_RECIPES[key]` is a `Recipe`: a label for the table, the AdamW learning rate, where that rate comes
from, and `make(base, ctx)`, which turns a fresh copy of the base model into the model to train (a
PeftModel, or the base itself for full fine-tuning). Every method then trains through one code path,
`minipeft.workshop.finetune.finetune`, on the same data, steps, batch and seed.

The recipes are the methods' own: each method package under minipeft/peft/tuners/ declares its recipes
(`RecipeSpec`s: label, rate, the rate's source, family, config) when it registers, and this module collects
those of every package found there; full fine-tuning, the baseline, is the one defined here. A method registered
from outside the package (`--import your_method.py`) reaches `finetune --method` through its peft_type, not
the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minipeft.nn.module import Module
from minipeft.peft import PeftConfig, full_finetune_config, get_peft_model, tuners
from minipeft.peft.registry import PEFT_TYPE_TO_RECIPES, PEFT_TYPE_TO_TUNER, RecipeSpec
from minipeft.peft.tuners.lora import ALL_LINEAR, LORA_ALPHA, LORA_R, NF4_DQ  # noqa: F401 (tutorial 11 reads them)
from minipeft.quant import BitsAndBytesConfig, quantize_model
from minipeft.workshop.tutorial_base import MINI

# The published table's row order (tutorial 11, BENCHMARKS.md); a method's recipe not named here comes after these,
# in the order the methods are found.
TABLE_ORDER = ("full", "lora-qv", "lora-all", "qlora", "houlsby", "pfeiffer", "ia3", "bitfit", "layernorm",
               "last-layer", "sparse", "prompt-tuning", "prefix-tuning")


@dataclass(frozen=True)
class BuildContext:
    """What a recipe may need besides the base model: training batches to score entries with (sparse)."""

    batches: Callable[[int], list[dict]]   # n -> the first n training batches (finetune's sampler, same seed)
    full_model_adapter: bool = False       # full fine-tuning as an adapter (a trained copy of every tensor,
    #                                        saved as an adapter folder: the CLI) instead of in place


@dataclass(frozen=True)
class Recipe:
    """One method of the comparison: how to build it on a base model and how fast it learns."""

    label: str                                          # the table's row name
    lr: float                                           # AdamW's peak learning rate (cosine schedule)
    lr_source: str                                      # where that rate comes from
    make: Callable[[Module, BuildContext], Module]      # (fresh base, context) -> the model to fine-tune
    family: str                                         # "full", "reparameterized", "additive", "selective", "soft
    #                                                     prompt": how the method changes the model (for plots)
    config: Callable[[Module], PeftConfig] | None = None  # base -> the adapter config make() uses (None: make()
    #                                                     builds more than a config, e.g. sparse's scoring)
    quantization: BitsAndBytesConfig | None = None      # the base is quantized with this first (QLoRA)


def _full(base: Module, ctx: BuildContext) -> Module:
    return get_peft_model(base, full_finetune_config()) if ctx.full_model_adapter else base


def from_spec(spec: RecipeSpec) -> Recipe:
    """A method's declared recipe as the harness runs it: the base (quantized first for QLoRA) with the adapter its
    config describes, made from the base (and the first `spec.batches` training batches, if it reads any)."""
    def make(base: Module, ctx: BuildContext) -> Module:
        model = base if spec.quantization is None else quantize_model(base, spec.quantization)
        return get_peft_model(model, spec.config(base, ctx.batches(spec.batches) if spec.batches else []))
    config = None if spec.batches else lambda base: spec.config(base, [])   # the CLI's --r/--alpha/--targets
    return Recipe(spec.label, spec.lr, spec.lr_source, make, spec.family, config, spec.quantization)


def method_recipes() -> dict[str, Recipe]:
    """Full fine-tuning, then the recipes of every method package under minipeft/peft/tuners/, in TABLE_ORDER."""
    found = {"full": Recipe("full fine-tuning", 1e-3, "tutorial 03 (also 07-09)", _full, "full")}
    for peft_type, specs in PEFT_TYPE_TO_RECIPES.items():
        if not PEFT_TYPE_TO_TUNER[peft_type].__module__.startswith(tuners.__name__ + "."):
            continue                                     # registered from outside the package: not in the table
        for key, spec in specs.items():
            if key in found:
                raise ValueError(f"{peft_type} declares the recipe {key!r}, which another method declares too")
            found[key] = from_spec(spec)
    order = sorted(found, key=lambda k: TABLE_ORDER.index(k) if k in TABLE_ORDER else len(TABLE_ORDER))
    return {key: found[key] for key in order}


METHOD_RECIPES: dict[str, Recipe] = method_recipes()

# Learning rates on a pretrained LLM, which wants other rates than the mini GPT (full fine-tuning of SmolLM2 at the
# mini GPT's 1e-3 destroys it). Each is (rate, where it comes from); a method missing here runs at its mini GPT rate,
# and its lr_source column says so.
PROBE = "bench/lr_probe.py --recipes: 10 steps of 4, held-out loss on 12 rows, 2026-12-08"


def _probed(grid: str, edge: bool = False) -> str:
    return f"best of {grid} ({PROBE})" + ("; the largest tried, so a larger one may do better" if edge else "")


LLM_RATES: dict[str, dict[str, tuple[float, str]]] = {
    "smollm2-135m-instruct": {
        "full": (3e-4, _probed("1e-5/3e-5/1e-4/3e-4", edge=True)),
        "lora-qv": (2e-3, "tutorial 12 (60 steps of 4: ROUGE-L 0.216 -> 0.835); not probed"),
        "lora-all": (1e-2, _probed("3e-4/1e-3/3e-3/1e-2", edge=True)),
        "qlora": (1e-2, "LoRA all linear's (the same adapters, trained on the dequantized weights); not probed"),
        "houlsby": (1e-2, _probed("3e-4/1e-3/3e-3/1e-2", edge=True)),
        "pfeiffer": (1e-2, _probed("3e-4/1e-3/3e-3/1e-2", edge=True)),
        "ia3": (3e-2, _probed("1e-2/3e-2/1e-1")),
        "layernorm": (1e-2, _probed("1e-3/1e-2/1e-1")),
        "last-layer": (3e-3, _probed("3e-5/1e-4/3e-4/1e-3/3e-3", edge=True)),
        "sparse": (1e-3, _probed("3e-4/1e-3/3e-3")),
        "prompt-tuning": (0.3, "held-out loss 1.216 at 0.3, 1.224 at 0.04, 20 steps of 4 (bench/lr_probe.py, "
                               "2026-12-08)"),
        "prefix-tuning": (3e-2, _probed("3e-3/1e-2/3e-2/1e-1/3e-1")),
    },
}


def recipe_rate(key: str, base: str = MINI) -> tuple[float, str]:
    """(learning rate, its source) of METHOD_RECIPES[key] on `base`: the recipe's own on the mini GPT, the measured
    LLM_RATES entry on a pretrained LLM, else the recipe's with a source saying it was not measured there."""
    rec = METHOD_RECIPES[key]
    if base == MINI:
        return rec.lr, rec.lr_source
    if key in LLM_RATES.get(base, {}):
        return LLM_RATES[base][key]
    return rec.lr, f"{rec.lr_source}: the mini GPT's rate, not measured on {base}"
