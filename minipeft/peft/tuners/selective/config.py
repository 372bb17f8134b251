"""`SelectiveConfig`: which *existing* parameters of the base model train (BitFit, LayerNorm tuning, the last
k blocks, the embedding table, full fine-tuning), and the helpers that name the usual choices.

Hugging Face PEFT has no BitFit: there one sets `requires_grad` by hand. Here the choice is a config like
any other method's, so every selective variant, full fine-tuning included, runs through `get_peft_model`
and `finetune()` on one code path, and its trained values are saved and swapped like any adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import ConfigError, PeftConfig, check_field, check_target_fields, is_index

TRAINABLE_TYPES = ("bias", "norm", "embedding", "all")   # what `trainable_types` may name


@dataclass
class SelectiveConfig(PeftConfig):
    """Train the base parameters this config selects (a trained copy of each; the base stays untouched).

    A parameter is selected when its kind is in `trainable_types` or its module (or a module above it)
    matches `target_modules`; `layers_to_transform` then keeps only those inside the listed blocks.
    """

    PEFT_TYPE: ClassVar[str] = "SELECTIVE"

    trainable_types: list[str] | None = None           # "bias" (BitFit), "norm" (LayerNorm scale and shift,
    #                                                    RMSNorm scale), "embedding" (the token embedding table,
    #                                                    model.get_input_embeddings(): wte, embed_tokens),
    #                                                    "all" (every parameter); None: ["bias"] unless
    #                                                    target_modules is set, then []
    target_modules: list[str] | str | None = None      # every parameter of these modules and of their submodules:
    #                                                    names ("wte", "blocks.3", "fc1") or one regex over paths
    layers_to_transform: list[int] | int | None = None  # keep only parameters inside these block indices

    def __post_init__(self):
        super().__post_init__()
        check_selection_fields(self, default_types=["bias"])


def check_selection_fields(config, default_types: list[str]) -> None:
    """Check and normalize trainable_types / target_modules / layers_to_transform (selective and sparse share them)."""
    t = config.trainable_types
    if t is None:
        config.trainable_types = list(default_types) if config.target_modules is None else []
    else:
        check_field(config, "trainable_types", isinstance(t, (list, tuple)) and all(x in TRAINABLE_TYPES for x in t),
                    f"None or a list drawn from {list(TRAINABLE_TYPES)}")
        config.trainable_types = list(dict.fromkeys(t))
    check_target_fields(config)     # names or one regex, layers_to_transform an index or a list of them
    if config.layers_to_transform is not None:
        config.layers_to_transform = list(config.layers_to_transform)
    if not config.trainable_types and config.target_modules is None:
        raise ConfigError(f"{type(config).__name__} selects nothing: trainable_types={config.trainable_types!r} and "
                          "target_modules=None; name a kind (trainable_types=['bias'] for BitFit, ['norm'], ['all']) "
                          "or modules (target_modules=['wte'])")


# ---- the usual choices, by name ---------------------------------------------------------------------------
def bitfit_config() -> SelectiveConfig:
    """BitFit (Ben Zaken et al., 2022): every bias term trains, Linear and LayerNorm biases alike.

    A model without biases (a Llama) is refused by name when the adapter is made: there is nothing to train."""
    return SelectiveConfig(trainable_types=["bias"])


def layernorm_config() -> SelectiveConfig:
    """Norm tuning: the scale and shift of every LayerNorm (GPT: ln_1, ln_2 per block, ln_f), or the scale of every
    RMSNorm (Llama: input_layernorm, post_attention_layernorm per layer, model.norm), train."""
    return SelectiveConfig(trainable_types=["norm"])


def last_k_layers_config(k: int, n_layer: int) -> SelectiveConfig:
    """Every parameter of the last k of n_layer blocks trains (ln_f and the embeddings stay frozen)."""
    if not (is_index(k) and is_index(n_layer) and 1 <= k <= n_layer):
        raise ConfigError(f"last_k_layers_config: k must be an int in [1, n_layer={n_layer!r}], got k={k!r}")
    return SelectiveConfig(trainable_types=["all"], layers_to_transform=list(range(n_layer - k, n_layer)))


def embeddings_config() -> SelectiveConfig:
    """The token embedding table trains (the GPT's wte, a Llama's embed_tokens: whatever get_input_embeddings()
    returns); with tied embeddings it is also the LM head's weight (one tensor)."""
    return SelectiveConfig(trainable_types=["embedding"])


def full_finetune_config() -> SelectiveConfig:
    """Full fine-tuning as a config: every parameter trains; an adapter file is then a full copy of the model."""
    return SelectiveConfig(trainable_types=["all"])
