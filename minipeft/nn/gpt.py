"""A GPT-2-style decoder: token + position embeddings, pre-LayerNorm blocks, tied LM head."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from minipeft import backend, ops
from minipeft.autograd import Tensor
from minipeft.nn.layers import MLP, Dropout, Embedding, LayerNorm, Linear
from minipeft.nn.module import Module, ModuleList


@dataclass
class GPTConfig:
    """Shape of a GPT model; every field validated in __post_init__."""

    vocab_size: int = 2048          # number of token ids (the tokenizer's vocabulary size)
    context_length: int = 256       # longest sequence the position table covers
    d_model: int = 128              # width of the residual stream
    n_layer: int = 4                # number of transformer blocks
    n_head: int = 4                 # attention heads; d_model must divide evenly
    d_ff: int = 512                 # hidden width of the MLP (4 * d_model in GPT-2)
    dropout: float = 0.0            # dropout on embeddings and residual branches
    bias: bool = True               # biases in Linear and LayerNorm layers
    tie_embeddings: bool = True     # LM head reuses the token embedding matrix (GPT-2)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "d_ff"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

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


class KVCache:
    """Per-layer keys and values of the tokens seen so far, for incremental decoding."""

    def __init__(self, n_layer: int):
        self.k: list = [None] * n_layer
        self.v: list = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[1]


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with separate q/k/v/out projections (PEFT targets)."""

    def __init__(self, cfg: GPTConfig):
        std, out_std = 0.02, 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale residual projections
        self.n_head = cfg.n_head
        self.q_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.k_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.v_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=std)
        self.out_proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias, std=out_std)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)        # (B, T, C) each
        if cache is not None:
            if cache.k[layer] is not None:
                k = ops.concat([Tensor(cache.k[layer]), k], axis=1)     # (B, past + T, C)
                v = ops.concat([Tensor(cache.v[layer]), v], axis=1)
            cache.k[layer], cache.v[layer] = k.data, v.data
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

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(Module):
    """Decoder-only transformer: `logits, loss = model(ids, targets)`."""

    def __init__(self, config: GPTConfig):
        self.config = config
        self.wte = Embedding(config.vocab_size, config.d_model)
        self.wpe = Embedding(config.context_length, config.d_model)
        self.drop = Dropout(config.dropout)
        self.blocks = ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = (None if config.tie_embeddings
                        else Linear(config.d_model, config.vocab_size, bias=False, std=0.02))

    def check_input(self, ids, past: int = 0):
        """Validate token ids (B, T): integer dtype, 2-D, within the context; returns the array."""
        ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {ids.dtype}; encode text with the tokenizer")
        if ids.ndim != 2:
            raise ValueError(f"GPT: token ids must have shape (batch, time), got {ids.shape}; "
                             "use ids[None] for a single sequence")
        T = ids.shape[1]
        if past + T > self.config.context_length:
            raise ValueError(f"GPT: sequence of {past + T} tokens exceeds the context length "
                             f"{self.config.context_length}; truncate the input to at most "
                             f"{self.config.context_length - past} tokens")
        return ids

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def forward(self, ids, targets=None, kv_cache: KVCache | None = None, ignore_index: int = -100,
                return_logits: bool = True):
        """Logits (B, T, vocab); with targets also the mean cross-entropy, else loss is None.

        With targets and return_logits=False, the LM head runs only at positions that have a target
        (logits come back as None): in fine-tuning most positions are prompt, so this skips most of
        the (N, C) x (C, vocab) head product and its softmax, and the loss is the same.
        """
        past = 0 if kv_cache is None else kv_cache.length
        ids = self.check_input(ids, past)
        T = ids.shape[1]
        pos = backend.xp().arange(past, past + T)
        x = self.drop(self.wte(ids) + self.wpe(pos))                    # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i)
        x = self.ln_f(x)
        head = self.wte.weight if self.lm_head is None else self.lm_head.weight
        if targets is not None and not return_logits:
            t = backend.xp().asarray(targets.data if isinstance(targets, Tensor) else targets).reshape(-1)
            keep = backend.xp().flatnonzero(t != ignore_index)           # positions with a target
            x = ops.reshape(x, (-1, x.shape[-1]))                         # (B*T, C)
            if keep.size < t.size:
                x, t = ops.getitem(x, keep), t[keep]                     # (n_targets, C)
            return None, ops.cross_entropy(ops.linear(x, head), t, ignore_index=ignore_index)
        logits = ops.linear(x, head)                                    # (B, T, vocab)
        loss = None if targets is None else ops.cross_entropy(logits, targets, ignore_index=ignore_index)
        return logits, loss

    def extra_repr(self) -> str:
        return f"{self.config}"
