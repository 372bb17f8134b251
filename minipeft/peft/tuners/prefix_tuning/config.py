"""`PrefixTuningConfig`, named and meant as Hugging Face PEFT's, saved as adapter_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.nn.module import Module
from minipeft.peft.config import check_field, is_count
from minipeft.peft.tuners.soft_prompt import PromptLearningConfig


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li & Liang, 2021): n trainable keys and values in front of every attention layer's.

    The prefixes are one table of shape (n, 2 * num_layers * token_dim), Hugging Face's layout: row i holds,
    for each layer l, that layer's key (columns 2l*d .. (2l+1)*d) then its value. d = token_dim is the width of
    one layer's keys: d_model, or n_kv_head * head_dim with grouped-query attention (a Llama's k_proj output),
    as Hugging Face fills it; num_attention_heads is then n_kv_head. With prefix_projection=True
    the table is made during training by a small MLP from n vectors of size token_dim (the paper's
    reparameterization, which it found steadier to train): tanh(E W1^T + b1) W2^T + b2, hidden width
    encoder_hidden_size. Saving folds the MLP into the plain table (as Hugging Face saves it), so an adapter
    loaded for inference (inference_mode=True) holds just the table.
    """

    PEFT_TYPE: ClassVar[str] = "PREFIX_TUNING"

    encoder_hidden_size: int | None = None   # the MLP's hidden width (None: token_dim, as Hugging Face fills it)
    prefix_projection: bool = False          # make the prefixes with the MLP while training

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "prefix_projection", isinstance(self.prefix_projection, bool), "True or False")
        check_field(self, "encoder_hidden_size", self.encoder_hidden_size is None or is_count(self.encoder_hidden_size),
                    "None (token_dim) or an int >= 1")

    def model_shape(self, model: Module) -> dict[str, int]:
        """As Hugging Face fills it: with grouped-query attention a layer's keys and values have n_kv_head heads, so
        token_dim is their width n_kv_head * head_dim (`model.kv_width`) and num_attention_heads is n_kv_head."""
        shape = super().model_shape(model)
        head_dim = model.config.d_model // model.config.n_head
        return {**shape, "token_dim": model.kv_width, "num_attention_heads": model.kv_width // head_dim}

    def fit_to(self, model: Module) -> None:
        super().fit_to(model)
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = self.token_dim

    def values_per_token(self) -> int:
        """A key and a value of token_dim for every layer: 2 * num_layers * token_dim."""
        return 2 * self.num_layers * self.token_dim
