"""A GPT-2-style decoder: token + position embeddings, pre-LayerNorm blocks, tied LM head."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.nn.causal_lm import CausalLM, KVCache, with_past
from minipeft.nn.layers import MLP, Dropout, Embedding, LayerNorm, Linear
from minipeft.nn.module import Module, ModuleList


@dataclass
class GPTConfig:
    """Shape of a GPT model; every field validated in __post_init__."""

    model_type: ClassVar[str] = "minipeft-gpt"   # the key of per-model defaults (transformers' config.model_type)
    vocab_size: int = 2048          # number of token ids (the tokenizer's vocabulary size)
    context_length: int = 256       # longest sequence the position table covers
    d_model: int = 128              # width of the residual stream
    n_layer: int = 4                # number of transformer blocks
    n_head: int = 4                 # attention heads; d_model must divide evenly
    d_ff: int = 512                 # hidden width of the MLP (4 * d_model in GPT-2)
    dropout: float = 0.0            # dropout on embeddings and residual branches
    bias: bool = True               # biases in Linear and LayerNorm layers
    tie_embeddings: bool = True     # LM head reuses the token embedding matrix (GPT-2)
    position_embedding: str = "learned"  # "learned": a position table added to the input (GPT-2);
    #                                      "rope": rotary embeddings turn each head's q and k (Llama, GPT-NeoX)
    rope_base: float = 10000.0      # RoPE's base: pair i turns by position * rope_base^(-2i / head size)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "d_ff"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.position_embedding not in ("learned", "rope"):
            raise ValueError(f"GPTConfig.position_embedding must be 'learned' or 'rope', got "
                             f"{self.position_embedding!r}")
        if self.position_embedding == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(f"GPTConfig: rope needs an even head size, got d_model / n_head = "
                             f"{self.d_model // self.n_head}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not (
                1 < self.rope_base < math.inf):
            raise ValueError(f"GPTConfig.rope_base must be > 1, got {self.rope_base!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {sorted(unknown)}; known fields are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A named size (see PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    # for unit tests: seconds to build and grad-check
    "test": dict(vocab_size=64, context_length=16, d_model=16, n_layer=2, n_head=2, d_ff=32),
    # the base model the tutorials pretrain on a laptop CPU in minutes
    "mini": dict(vocab_size=2048, context_length=256, d_model=128, n_layer=4, n_head=4, d_ff=512),
    # GPT-2 small's dimensions (not trained here; for parameter-count tables)
    "gpt2-small": dict(vocab_size=50257, context_length=1024, d_model=768, n_layer=12, n_head=12, d_ff=3072),
    # Vaswani et al. (2017) base dimensions: d_model 512, 8 heads of 64, d_ff 2048, 6 layers
    "vaswani-base": dict(vocab_size=37000, context_length=512, d_model=512, n_layer=6, n_head=8, d_ff=2048),
}


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with separate q/k/v/out projections (PEFT targets)."""

    def __init__(self, cfg: GPTConfig):
        std, out_std = 0.02, 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale residual projections
        self.n_head = cfg.n_head
        self.rope_base = cfg.rope_base if cfg.position_embedding == "rope" else None
        self.q_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.k_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.v_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.out_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=out_std)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, prefix=None, pos=None) -> Tensor:
        """prefix: None or (k, v), each (B, P, C), put in front of this layer's keys and values.
        pos: the positions (T,) of x's tokens, which rotary embeddings turn q and k by."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)        # (B, T, C) each
        if self.rope_base is not None:
            # turned before caching: a cached key keeps the turn of its own position; prefix keys have none
            q = ops.rotary(q, pos, self.n_head, self.rope_base)
            k = ops.rotary(k, pos, self.n_head, self.rope_base)
        k, v = with_past(k, v, prefix, cache, layer)                   # (B, P + past + T, C) each
        y = ops.attention(q, k, v, n_head=self.n_head, causal=True)
        return self.dropout(self.out_proj(y))


class Block(Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig):
        self.ln_1 = LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.d_model, bias=cfg.bias)
        out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.bias, std=0.02, out_std=out_std)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0, prefix=None, pos=None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, prefix, pos)
        return x + self.mlp(self.ln_2(x))


class GPT(CausalLM):
    """Decoder-only transformer: `logits, loss = model(ids, targets)` (forward: nn/causal_lm.py)."""

    name = "GPT"

    def __init__(self, config: GPTConfig):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}; build one with GPTConfig(**fields), "
                            "GPTConfig.from_dict(d) or GPTConfig.from_preset('mini')")
        self.config = config
        self.wte = Embedding(config.vocab_size, config.d_model)
        self.wpe = Embedding(config.context_length, config.d_model) if config.position_embedding == "learned" else None
        self.drop = Dropout(config.dropout)
        self.blocks = ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = (None if config.tie_embeddings
                        else Linear(config.d_model, config.vocab_size, bias=False, std=0.02))

    def get_input_embeddings(self) -> Embedding:
        return self.wte

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache: KVCache | None = None):
        """The last hidden states ln_f(x), (B, T, C), of token ids or of inputs_embeds (see forward)."""
        x, prefix, pos = self.embed_with_positions(ids, inputs_embeds, prefix_kv, kv_cache)   # (B, T, C), (T,)
        if self.wpe is not None:
            x = x + self.wpe(pos)                                       # (B, T, C) learned positions
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i, None if prefix is None else prefix[i], pos)
        self.advance_cache(kv_cache, x.shape[1], prefix)
        return self.ln_f(x)

    def head(self, h: Tensor) -> Tensor:
        """The LM head: logits (..., vocab) = h @ wte^T (tied), or lm_head(h) as a module (so wrappers apply)."""
        return ops.linear(h, self.wte.weight) if self.lm_head is None else self.lm_head(h)

    def extra_repr(self) -> str:
        return f"{self.config}"
