"""Every fine-tuning method the comparison runs, as its own tutorial trains it: config and learning rate.

`METHOD_RECIPES[key]` is a `Recipe`: a label for the table, the AdamW learning rate, where that rate comes
from, and `make(base, ctx)`, which turns a fresh copy of the base model into the model to train (a
PeftModel, or the base itself for full fine-tuning). Every method then trains through one code path,
`minipeft.workshop.finetune.finetune`, on the same data, steps, batch and seed.

Learning rates: the rate each method's tutorial found or used. The LoRA variants (q,v; all linear; QLoRA)
share tutorial 06's 1e-2, picked there by validation loss after 60 steps over a grid (better than the 3e-3
that tutorials 03, 05 and 10 used at 200-300 steps): the comparison trains for fewer steps than those, and
one rate for the three keeps LoRA against QLoRA a comparison of the base's format only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minipeft.nn.module import Module
from minipeft.peft import (
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SparseConfig,
    bitfit_config,
    full_finetune_config,
    get_peft_model,
    last_k_layers_config,
    layernorm_config,
    select_sparse_entries,
)
from minipeft.quant import BitsAndBytesConfig, quantize_model

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]   # the GPT's "all-linear" (its head is tied)
LORA_R, LORA_ALPHA = 8, 16                                               # tutorial 03's LoRA
IA3_TARGETS = ["k_proj", "v_proj", "fc2"]                                # the (IA)^3 paper's: keys, values, MLP
VIRTUAL_TOKENS = 20                                                      # soft prompts (tutorials 08, 09)
SPARSE_PERCENT, SCORE_BATCHES = 1.0, 8                                   # tutorial 07: top 1% by Fisher, 8 batches
NF4_DQ = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)


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


def lora_budget(base: Module) -> int:
    """Trainable parameters of LoRA r=8 on every block linear: what the bottleneck widths are matched to."""
    return sum(LORA_R * (m.in_features + m.out_features) for path, m in base.named_modules()
               if path.rsplit(".", 1)[-1] in ALL_LINEAR)


def matched_width(budget: int, n_adapters: int, d: int) -> int:
    """The bottleneck width m whose n_adapters x (2 d m + d + m) parameters come closest to budget (1 <= m <= d)."""
    return int(min(max(round((budget / n_adapters - d) / (2 * d + 1)), 1), d))


def _full(base: Module, ctx: BuildContext) -> Module:
    return get_peft_model(base, full_finetune_config()) if ctx.full_model_adapter else base


def _bottleneck(layout: str) -> Callable[[Module], PeftConfig]:
    def config(base: Module) -> PeftConfig:
        cfg = base.config
        per_block = 2 if layout == "houlsby" else 1                     # Houlsby: after attention and MLP
        m = matched_width(lora_budget(base), per_block * cfg.n_layer, cfg.d_model)
        return getattr(BottleneckConfig, layout)(bottleneck_size=m, non_linearity="relu")
    return config


def _sparse(base: Module, ctx: BuildContext) -> Module:
    config = select_sparse_entries(base, SparseConfig(percent=SPARSE_PERCENT, score="fisher"),
                                   ctx.batches(SCORE_BATCHES))
    return get_peft_model(base, config)


def peft_recipe(label: str, lr: float, lr_source: str, config: Callable[[Module], PeftConfig], family: str,
                quantization: BitsAndBytesConfig | None = None) -> Recipe:
    """A recipe that is an adapter config on the base (quantized first when `quantization` is given)."""
    def make(base: Module, ctx: BuildContext) -> Module:
        return get_peft_model(base if quantization is None else quantize_model(base, quantization), config(base))
    return Recipe(label, lr, lr_source, make, family, config, quantization)


def _lora(targets: list[str] | str) -> Callable[[Module], PeftConfig]:
    return lambda base: LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=targets)


T06 = "tutorial 06 (60-step validation-loss grid)"
T07 = "tutorial 07"
T07_LR = " (best of 4 in bench/lr_probe.py, 60 steps of 8)"
T08, PROBE = "tutorial 08", " in bench/lr_probe.py; AdamW, not Lester et al.'s Adafactor)"
METHOD_RECIPES: dict[str, Recipe] = {
    "full": Recipe("full fine-tuning", 1e-3, "tutorial 03 (also 07-09)", _full, "full"),
    "lora-qv": peft_recipe("LoRA r=8 q,v", 1e-2, T06 + " (module docstring)", _lora(["q_proj", "v_proj"]),
                           "reparameterized"),
    "lora-all": peft_recipe("LoRA r=8 all linear", 1e-2, T06, _lora("all-linear"), "reparameterized"),
    "qlora": peft_recipe("QLoRA r=8 (NF4+DQ)", 1e-2, T06 + ", as LoRA all linear", _lora("all-linear"),
                         "reparameterized", quantization=NF4_DQ),
    "houlsby": peft_recipe("Houlsby adapters", 1e-2, T06, _bottleneck("houlsby"), "additive"),
    "pfeiffer": peft_recipe("Pfeiffer adapters", 1e-2, T06, _bottleneck("pfeiffer"), "additive"),
    "ia3": peft_recipe("(IA)^3", 3e-1, T06 + " (loss fell at every step up to 3e-1)",
                       lambda b: IA3Config(), "additive"),   # the model type's defaults: IA3_TARGETS on the GPT
    "bitfit": peft_recipe("BitFit", 1e-1, T07 + T07_LR, lambda b: bitfit_config(), "selective"),
    "layernorm": peft_recipe("LayerNorm only", 3e-1, T07 + T07_LR, lambda b: layernorm_config(), "selective"),
    "last-layer": peft_recipe("last block", 1e-2, T07 + T07_LR, lambda b: last_k_layers_config(1, b.config.n_layer),
                              "selective"),
    "sparse": Recipe("sparse 1% (Fisher)", 3e-2, T07 + T07_LR, _sparse, "selective"),
    "prompt-tuning": peft_recipe(f"prompt tuning n={VIRTUAL_TOKENS}", 30.0, T08 + " (best of 10" + PROBE,
                                 lambda b: PromptTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS,
                                                              prompt_tuning_init="SAMPLE_VOCAB"), "soft prompt"),
    "prefix-tuning": peft_recipe(f"prefix tuning n={VIRTUAL_TOKENS}", 3e-1, T08 + " (best of 6" + PROBE,
                                 lambda b: PrefixTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS), "soft prompt"),
}
