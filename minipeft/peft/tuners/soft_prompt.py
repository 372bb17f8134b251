"""What the soft-prompt methods (prompt tuning, prefix tuning) share: Hugging Face's `PromptLearningConfig`
fields and a tuner that wraps no layer.

A soft prompt changes no module of the base model. Its weights sit on the tuner itself, in the slot
`prompt_encoder` (`prompt_encoder.<adapter>.embedding.weight`, the name Hugging Face PEFT gives them), and the
tuner drives the model (the GPT or a Llama, nn/causal_lm.py) through its hooks instead of wrapping layers:
`inputs_embeds` (virtual tokens in front of the token embeddings) or `prefix_kv` (keys and values in front of
every attention layer's, `model.kv_width` wide). Everything else (the adapter registry, freezing, counts, the
fingerprint, modules_to_save) is the shared BaseTuner's.

On disk Hugging Face saves a prompt-learning adapter's weights under one key, `prompt_embeddings`, not under
the module path; `adapter_file_keys` maps that key to the live parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft import ops
from minipeft.nn.module import Module
from minipeft.peft.config import ConfigError, PeftConfig, check_field, is_count, is_str_list
from minipeft.peft.tuners.base import BaseTuner

PROMPT_EMBEDDINGS = "prompt_embeddings"   # Hugging Face's key for a prompt-learning adapter's weights


@dataclass
class PromptLearningConfig(PeftConfig):
    """Hugging Face's `PromptLearningConfig`: the fields every soft-prompt method has.

    The model-shape fields (token_dim, num_layers, num_attention_heads) may be left None: get_peft_model
    fills them from the model, as Hugging Face does, so the saved adapter_config.json states them; a value
    that does not match the model is refused.
    """

    num_virtual_tokens: int | None = None        # n >= 1, the number of virtual tokens (required)
    token_dim: int | None = None                 # d_model of the base model (filled in from the model)
    num_transformer_submodules: int | None = None  # 1 for a decoder-only model (the only kind here)
    num_attention_heads: int | None = None       # the base model's n_head (filled in)
    num_layers: int | None = None                # the base model's n_layer (filled in)
    modules_to_save: list[str] | None = None     # extra modules trained in full and saved (copied)

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        # 0 would train nothing: a run at a constant loss that looks like a run
        check_field(self, "num_virtual_tokens", is_count(self.num_virtual_tokens),
                    f"an int >= 1 (the soft prompt's length, e.g. {name}(num_virtual_tokens=20))")
        for field_name in ("token_dim", "num_attention_heads", "num_layers"):
            v = getattr(self, field_name)
            check_field(self, field_name, v is None or is_count(v), "None (taken from the model) or an int >= 1")
        check_field(self, "num_transformer_submodules", self.num_transformer_submodules in (None, 1),
                    "None or 1 (a decoder-only model has one transformer stack; 2 is for encoder-decoders)")
        check_field(self, "modules_to_save", self.modules_to_save is None or is_str_list(self.modules_to_save),
                    "None or a list of module names")

    def model_shape(self, model: Module) -> dict[str, int]:
        """The model-shape fields as this method means them for `model`: its width, layers and heads."""
        cfg = model.config
        return {"token_dim": cfg.d_model, "num_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                "num_transformer_submodules": 1}

    def fit_to(self, model: Module) -> None:
        """Fill the model-shape fields from the model's config, or refuse ones that differ from it (naming both)."""
        cfg = getattr(model, "config", None)
        if cfg is None or not all(hasattr(cfg, f) for f in ("d_model", "n_layer", "n_head")):
            raise TypeError(f"{self.peft_type}: the model must be a decoder-only language model (a GPT or a Llama, "
                            f"with .config.d_model/n_layer/n_head), got {type(model).__name__}")
        for field_name, value in self.model_shape(model).items():
            given = getattr(self, field_name)
            if given is not None and given != value:
                raise ConfigError(f"{type(self).__name__}.{field_name}={given} does not fit the model, which has "
                                  f"{value}; leave it None to take the model's")
            setattr(self, field_name, value)

    def values_per_token(self) -> int:
        """Trainable values one virtual token holds: an embedding of token_dim (prefix tuning: more)."""
        return self.token_dim


def check_prompt_size(config: PromptLearningConfig, model: Module) -> None:
    """Refuse, before allocating it, a soft prompt with more values than the whole base model: a PEFT method
    trains a small fraction of the base, and so many virtual tokens are a typo (10**9 for 10**2)."""
    n, per_token = config.num_virtual_tokens, config.values_per_token()
    limit = model.num_parameters()
    if n * per_token > limit:
        ctx = model.config.context_length
        raise ConfigError(f"{type(config).__name__}.num_virtual_tokens={n} makes a soft prompt of {n} x {per_token} "
                          f"values ({n * per_token * 4 / 2**30:.3g} GiB in float32), more than the whole base model's "
                          f"{limit:,d} parameters, and the model reads {ctx} positions; use a few virtual tokens "
                          f"(1-100 is usual; at most {min(ctx - 1, limit // per_token)} here)")


class SoftPromptTuner(BaseTuner):
    """A tuner whose adapters are soft prompts held in `prompt_encoder` on the tuner; no base module is wrapped.

    Subclasses write `_make_encoder(config, adapter_name)` (the per-adapter Module, whose trained or folded
    weight is `embedding.weight`) and the forward through the model's hooks.
    """

    tuner_slot_names = ("prompt_encoder",)
    layer_classes = ()
    mergeable = False
    PROMPT_SLOT: ClassVar[str] = "prompt_encoder"

    def __init__(self, model: Module, config: PromptLearningConfig, adapter_name: str):
        self.disabled = False   # disable_adapter_layers(): run the base model alone
        super().__init__(model, config, adapter_name)

    # ---- injection: no layer is wrapped -------------------------------------------------------------
    def _inject(self, name: str, config: PromptLearningConfig) -> None:
        config.fit_to(self.model)
        check_prompt_size(config, self.model)
        self.prompt_encoder[name] = self._make_encoder(config, name)

    def _make_encoder(self, config: PromptLearningConfig, name: str) -> Module:
        raise NotImplementedError(f"{type(self).__name__} does not implement _make_encoder()")

    def set_adapters_disabled(self, disabled: bool) -> None:
        super().set_adapters_disabled(disabled)   # modules_to_save copies, if any
        self.disabled = disabled

    def _active(self):
        """(adapter name, its config), or None while disabled / with no adapter."""
        name = self.active_adapter
        if self.disabled or name is None or name not in self.prompt_encoder:
            return None
        return name, self.peft_config[name]

    # ---- the adapter file: Hugging Face's `prompt_embeddings` key -----------------------------------
    def adapter_file_keys(self, name: str) -> dict[str, str]:
        """`prompt_embeddings` -> `prompt_encoder.<name>.embedding.weight`; modules_to_save copies as BaseTuner
        saves them."""
        live = f"{self.PROMPT_SLOT}.{name}.embedding.weight"
        keys = super().adapter_file_keys(name)
        if live not in keys.values():
            raise ValueError(f"adapter {name!r} has no {live}; its file holds the prompt as {PROMPT_EMBEDDINGS!r}")
        return {(PROMPT_EMBEDDINGS if v == live else k): v for k, v in keys.items()}

    # ---- running the model ---------------------------------------------------------------------------
    def forward(self, ids=None, targets=None, *, inputs_embeds=None, prefix_kv=None, kv_cache=None,
                ignore_index: int = -100):
        """(logits (B, T, vocab), loss) as the model's forward gives them, with the active soft prompt applied."""
        h = self.hidden_states(ids, inputs_embeds=inputs_embeds, prefix_kv=prefix_kv, kv_cache=kv_cache)
        logits = self.head(h)                                           # (B, T, vocab)
        loss = None if targets is None else ops.cross_entropy(logits, targets, ignore_index=ignore_index)
        return logits, loss
