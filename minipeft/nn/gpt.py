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


class KVCache:
    """Per-layer keys and values seen so far (Tensors, so a cached forward carries gradients).

    k[i] and v[i] are (B, prefix_length + length, C): first a prefix (prefix_kv of the first call),
    then one entry per real token. Every entry takes a position, the prefix's too, as in Hugging Face
    transformers' cache: the next token's position is `next_position`, the number of entries so far.
    """

    def __init__(self, n_layer: int):
        self.k: list[Tensor | None] = [None] * n_layer     # per layer (B, prefix_length + length, C)
        self.v: list[Tensor | None] = [None] * n_layer
        self.prefix_length = 0                              # leading entries that came from prefix_kv
        self.length = 0                                     # real tokens stored after the prefix

    @property
    def next_position(self) -> int:
        """The position of the next token: prefix entries and earlier tokens each took one."""
        return self.prefix_length + self.length

    @property
    def empty(self) -> bool:
        """True before the first forward: the only time prefix_kv may be passed with this cache."""
        return self.k[0] is None


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
        if prefix is not None:
            # the op treats q as the LAST T of the P + T key positions: every query sees the whole
            # prefix and the tokens up to itself
            k = ops.concat([prefix[0], k], axis=1)                      # (B, P + T, C)
            v = ops.concat([prefix[1], v], axis=1)
        if cache is not None:
            if cache.k[layer] is not None:
                k = ops.concat([cache.k[layer], k], axis=1)             # (B, past + T, C)
                v = ops.concat([cache.v[layer], v], axis=1)
            cache.k[layer], cache.v[layer] = k, v
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


class GPT(Module):
    """Decoder-only transformer: `logits, loss = model(ids, targets)`."""

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

    def check_input(self, ids, past: int = 0):
        """Validate token ids (B, T): integer dtype, 2-D, within the context; returns the array."""
        try:
            ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        except ValueError:   # NumPy: "inhomogeneous shape"
            raise ValueError("GPT: token ids must be a rectangular (batch, time) array, got sequences of different "
                             "lengths; pad them to one length (minipeft.data.collate_sft does) or run them "
                             "one at a time") from None
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {ids.dtype}; encode text with the tokenizer")
        if ids.ndim != 2:
            raise ValueError(f"GPT: token ids must have shape (batch, time), got {ids.shape}; "
                             "use ids[None] for a single sequence")
        if 0 in ids.shape:
            raise ValueError(f"GPT: token ids have shape {ids.shape}, an empty batch; pass at least one sequence "
                             "of at least one token (is batch_size 0?)")
        self._check_fits(ids.shape[1], past)
        return ids

    def _check_fits(self, T: int, past: int, what: str = "tokens") -> None:
        if past + T > self.config.context_length:
            raise ValueError(f"GPT: sequence of {past + T} {what} exceeds the context length "
                             f"{self.config.context_length}; truncate the input to at most "
                             f"{self.config.context_length - past} {what}")

    def _embed(self, ids, inputs_embeds, past: int) -> Tensor:
        """Token embeddings (B, T, C): wte(ids), or inputs_embeds checked for shape and dtype."""
        if (ids is None) == (inputs_embeds is None):
            raise ValueError("GPT: pass exactly one of ids and inputs_embeds, got "
                             f"{'both' if ids is not None else 'neither'}; inputs_embeds (B, T, C) replaces "
                             "wte(ids), e.g. to put soft-prompt vectors in front of the tokens' embeddings")
        if ids is not None:
            return self.wte(self.check_input(ids, past))
        C, dtype = self.config.d_model, self.wte.weight.dtype
        if not isinstance(inputs_embeds, Tensor):
            raise TypeError(f"GPT: inputs_embeds must be a Tensor, got {type(inputs_embeds).__name__}; "
                            "wrap an array as minipeft.Tensor(array)")
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != C:
            raise ValueError(f"GPT: inputs_embeds must have shape (batch, time, d_model={C}), got "
                             f"{inputs_embeds.shape}; use x[None] for a single sequence")
        if 0 in inputs_embeds.shape:
            raise ValueError(f"GPT: inputs_embeds has shape {inputs_embeds.shape}, an empty batch; pass at least one "
                             "sequence of at least one position")
        if inputs_embeds.dtype != dtype:
            raise TypeError(f"GPT: inputs_embeds has dtype {inputs_embeds.dtype} but the model is {dtype}; "
                            f"convert it (or the model with .to({dtype}))")
        self._check_fits(inputs_embeds.shape[1], past, "positions (tokens and virtual tokens)")
        return inputs_embeds

    def _check_prefix(self, prefix_kv, B: int, cache: KVCache | None) -> list | None:
        """prefix_kv as n_layer pairs (k, v) of shape (B, P, C); (P, C) is broadcast over the batch."""
        if prefix_kv is None:
            return None
        L, C, dtype = self.config.n_layer, self.config.d_model, self.wte.weight.dtype
        if cache is not None and not cache.empty:
            raise ValueError("GPT: prefix_kv was passed with a KV cache that is not empty; the prefix enters the "
                             "cache on the first call, so pass prefix_kv only while kv_cache.empty")
        if not isinstance(prefix_kv, (list, tuple)) or len(prefix_kv) != L:
            got = f"length {len(prefix_kv)}" if isinstance(prefix_kv, (list, tuple)) else type(prefix_kv).__name__
            raise ValueError(f"GPT: prefix_kv must be a list of n_layer={L} pairs (k, v), one per layer, got {got}")
        P, out = None, []
        for i, pair in enumerate(prefix_kv):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"GPT: prefix_kv[{i}] must be a pair (k, v), got {type(pair).__name__}")
            for name, t in zip("kv", pair, strict=True):
                where = f"prefix_kv[{i}] {name}"
                if not isinstance(t, Tensor):
                    raise TypeError(f"GPT: {where} must be a Tensor, got {type(t).__name__}; wrap an array as "
                                    "minipeft.Tensor(array)")
                if t.ndim not in (2, 3) or t.shape[-1] != C or (t.ndim == 3 and t.shape[0] != B):
                    raise ValueError(f"GPT: {where} has shape {t.shape}; it must be (P, d_model={C}), shared by "
                                     f"the batch, or (batch={B}, P, {C})")
                if t.dtype != dtype:
                    raise TypeError(f"GPT: {where} has dtype {t.dtype} but the model is {dtype}; convert it")
                if P is None:
                    P = t.shape[-2]
                if t.shape[-2] != P:
                    raise ValueError(f"GPT: {where} has prefix length {t.shape[-2]} but prefix_kv[0] k has {P}; "
                                     "every layer's k and v must have the same P")
            out.append(tuple(t if t.ndim == 3 else ops.broadcast_to(t, (B, P, C)) for t in pair))
        return out

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache: KVCache | None = None):
        """The last hidden states ln_f(x), (B, T, C), of token ids or of inputs_embeds (see forward)."""
        past = 0 if kv_cache is None else kv_cache.next_position
        x = self._embed(ids, inputs_embeds, past)                       # (B, T, C)
        B, T = x.shape[:2]
        if kv_cache is not None and not kv_cache.empty and kv_cache.k[0].shape[0] != B:
            raise ValueError(f"GPT: the KV cache holds a batch of {kv_cache.k[0].shape[0]} sequences but the "
                             f"input has {B}; use one cache per batch (model.new_kv_cache())")
        prefix = self._check_prefix(prefix_kv, B, kv_cache)
        if prefix is not None:     # a new prefix of P entries takes positions 0..P-1; the tokens come after it
            past = prefix[0][0].shape[1]
            if past + T > self.config.context_length:
                ctx = self.config.context_length
                raise ValueError(f"GPT: a prefix of {past} entries + {T} tokens = {past + T} positions exceed the "
                                 f"context length {ctx} (the prefix takes positions 0..{past - 1}); truncate the "
                                 f"input to at most {ctx - past} tokens, or use a shorter prefix")
        pos = backend.xp().arange(past, past + T)                      # (T,) the tokens' positions
        if self.wpe is not None:
            x = x + self.wpe(pos)                                       # (B, T, C) learned positions
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i, None if prefix is None else prefix[i], pos)
        if kv_cache is not None:
            kv_cache.length += T
            if prefix is not None:
                kv_cache.prefix_length = prefix[0][0].shape[1]
        return self.ln_f(x)

    def head(self, h: Tensor) -> Tensor:
        """The LM head: logits (..., vocab) = h @ wte^T (tied), or lm_head(h) as a module (so wrappers apply)."""
        return ops.linear(h, self.wte.weight) if self.lm_head is None else self.lm_head(h)

    def forward(self, ids=None, targets=None, *, inputs_embeds=None, prefix_kv=None,
                kv_cache: KVCache | None = None, ignore_index: int = -100):
        """(logits (B, T, vocab), loss): loss is the mean cross-entropy over targets != ignore_index, or None.

        Positions: a token's position is the number of keys before it in its layer's attention, prefix entries
        and cached tokens included (Hugging Face transformers' rule, a position per cache entry), so a model
        given a prefix or a cache computes what the same weights compute in transformers. Every decoder in
        minipeft.nn follows this rule (learned position rows or rotary angles alike).
        inputs_embeds (B, T, C) replaces wte(ids) (exactly one of the two); position embeddings are still
        added, so virtual tokens (prompt tuning) take positions and count against context_length.
        prefix_kv: n_layer pairs (k, v), each (B, P, C) or (P, C), put in front of each layer's keys and
        values (prefix tuning); every query sees the whole prefix. The P entries take positions 0..P-1 (the
        keys themselves carry no position: no rotation, no position embedding), and the T tokens take
        P..P+T-1, as Hugging Face PEFT's prefix tuning places them (its prefix is transformers' past_key_values),
        so a prefix counts against context_length.
        kv_cache: keys and values of earlier calls are reused and this call's appended; a prefix enters
        the cache on the first call (kv_cache.empty), so a tuner passes prefix_kv only then. The next token's
        position is kv_cache.next_position.
        For training on target positions only, see minipeft.loss.causal_lm_loss.
        """
        h = self.hidden_states(ids, inputs_embeds=inputs_embeds, prefix_kv=prefix_kv, kv_cache=kv_cache)
        logits = self.head(h)                                           # (B, T, vocab)
        loss = None if targets is None else ops.cross_entropy(logits, targets, ignore_index=ignore_index)
        return logits, loss

    def extra_repr(self) -> str:
        return f"{self.config}"
