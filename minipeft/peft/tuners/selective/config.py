"""`SelectiveConfig`: which *existing* parameters of the base model train (BitFit, LayerNorm tuning, the last
k blocks, the embedding table, full fine-tuning), and the helpers that name the usual choices.

Hugging Face PEFT has no BitFit: there one sets `requires_grad` by hand. Here the choice is a config like
any other method's, so every selective variant, full fine-tuning included, runs through `get_peft_model`
and `finetune()` on one code path, and its trained values are saved and swapped like any adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.peft.config import ConfigError, PeftConfig, is_index
from minipeft.peft.tuners.selection import check_selection_fields


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
