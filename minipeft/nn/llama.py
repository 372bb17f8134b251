"""A Llama-family decoder (Llama 2/3, SmolLM2, Mistral's shape): RMSNorm, SwiGLU, grouped-query attention, RoPE.

Module names are transformers' `LlamaForCausalLM` names, so a PEFT config targets what it targets in Hugging Face
PEFT (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) and adapter files carry HF's
keys (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`):

    LlamaForCausalLM
      model: embed_tokens, layers.N (input_layernorm, self_attn, post_attention_layernorm, mlp), norm
      lm_head (None when tied: the logits are h @ embed_tokens.weight^T)

Against the mini GPT (nn/gpt.py), a block changes in four places:
- RMSNorm instead of LayerNorm, no biases anywhere (ops/llama.py);
- the MLP is gated: down_proj(silu(gate_proj(x)) * up_proj(x));
- keys and values have n_kv_head < n_head heads, each shared by n_head / n_kv_head query heads (grouped-query
  attention; ops/multihead_attention.py), so k_proj and v_proj are (n_kv_head * head_dim, d_model);
- positions enter only through rotary embeddings of q and k, in the "rotate half" layout transformers uses
  (ops/rotary.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from minipeft import backend, ops
from minipeft.autograd import Tensor
from minipeft.nn.causal_lm import CausalLM, KVCache, with_past
from minipeft.nn.layers import Embedding, Linear
from minipeft.nn.module import Module, ModuleList, Parameter

# transformers' LlamaConfig field for each LlamaConfig field here (config.json <-> LlamaConfig)
HF_FIELDS = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "d_model": "hidden_size",
             "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
             "d_ff": "intermediate_size", "rope_base": "rope_theta", "rms_norm_eps": "rms_norm_eps",
             "tie_embeddings": "tie_word_embeddings"}


@dataclass
class LlamaConfig:
    """Shape of a Llama model, in the mini GPT's field names (HF_FIELDS maps them to transformers')."""

    model_type: ClassVar[str] = "llama"   # transformers' config.model_type: Hugging Face PEFT's per-model defaults
    vocab_size: int = 49152         # token ids
    context_length: int = 8192      # longest sequence (max_position_embeddings)
    d_model: int = 576              # width of the residual stream (hidden_size)
    n_layer: int = 30               # decoder layers
    n_head: int = 9                 # query heads; head_dim = d_model / n_head
    n_kv_head: int = 3              # key/value heads, each shared by n_head / n_kv_head query heads
    d_ff: int = 1536                # hidden width of the gated MLP (intermediate_size)
    rope_base: float = 100000.0     # RoPE's base (rope_theta)
    rms_norm_eps: float = 1e-5      # RMSNorm's epsilon
    tie_embeddings: bool = True     # the LM head reuses embed_tokens (SmolLM2 does)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "n_kv_head", "d_ff"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {v!r}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"LlamaConfig: d_model={self.d_model} must split into n_head={self.n_head} heads of "
                             "even size (rotary embeddings turn channel pairs)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        for name, low in (("rope_base", 1.0), ("rms_norm_eps", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low < v < math.inf:
                raise ValueError(f"LlamaConfig.{name} must be a number > {low}, got {v!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"LlamaConfig.tie_embeddings must be True or False, got {self.tie_embeddings!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LlamaConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"LlamaConfig: unknown fields {sorted(unknown)}; known fields are "
                             f"{sorted(f.name for f in fields(cls))}")
        return cls(**d)

    def to_hf_dict(self) -> dict:
        """transformers' config.json for this shape (model_type llama)."""
        out = {hf: getattr(self, ours) for ours, hf in HF_FIELDS.items()}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, "head_dim": self.head_dim, **out}

    @classmethod
    def from_hf_dict(cls, d: dict) -> LlamaConfig:
        """From transformers' config.json; refuses a model this implementation would run wrongly, by field."""
        if d.get("model_type") != "llama":
            raise ValueError(f"config.json: model_type is {d.get('model_type')!r}; only 'llama' models load here")
        rope = d.get("rope_parameters")          # transformers 5 writes rope_theta inside rope_parameters
        if rope is not None:
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"config.json: rope_parameters.rope_type={rope.get('rope_type')!r} is not supported "
                                 "here (only 'default' rotary embeddings)")
            d = {**d, "rope_theta": rope.get("rope_theta", d.get("rope_theta"))}
        head_dim = d.get("hidden_size", 0) // d.get("num_attention_heads", 1)
        checks = {"hidden_act": ("silu",), "attention_bias": (False, None), "mlp_bias": (False, None),
                  "rope_scaling": (None,), "head_dim": (None, head_dim)}
        for key, allowed in checks.items():
            if d.get(key) not in allowed:
                raise ValueError(f"config.json: {key}={d.get(key)!r} is not supported here (supported: "
                                 f"{', '.join(map(repr, allowed))})")
        missing = [hf for ours, hf in HF_FIELDS.items() if hf not in d and ours not in ("tie_embeddings", "n_kv_head")]
        if missing:
            raise ValueError(f"config.json lacks {missing}, which a Llama model needs")
        kw = {ours: d[hf] for ours, hf in HF_FIELDS.items() if d.get(hf) is not None}
        kw.setdefault("n_kv_head", kw["n_head"])        # transformers: None means one key/value head per query head
        kw.setdefault("tie_embeddings", False)          # transformers' LlamaConfig default
        return cls(**{k: (float(v) if k in ("rope_base", "rms_norm_eps") else v) for k, v in kw.items()})


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis (weight starts at ones); no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.dim, self.eps = dim, eps
        self.weight = Parameter(backend.xp().ones(dim, dtype=backend.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LlamaMLP(Module):
    """The gated feed-forward block: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, cfg: LlamaConfig):
        std = 0.02                                          # transformers' initializer_range
        self.gate_proj = Linear(cfg.d_model, cfg.d_ff, bias=False, std=std)
        self.up_proj = Linear(cfg.d_model, cfg.d_ff, bias=False, std=std)
        self.down_proj = Linear(cfg.d_ff, cfg.d_model, bias=False, std=std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(ops.swiglu(self.gate_proj(x), self.up_proj(x)))   # (B, T, C)


class LlamaAttention(Module):
    """Causal grouped-query self-attention with rotary q and k; keys and values of n_kv_head heads."""

    def __init__(self, cfg: LlamaConfig):
        hs, std = cfg.head_dim, 0.02
        self.n_head, self.n_kv_head, self.rope_base = cfg.n_head, cfg.n_kv_head, cfg.rope_base
        self.q_proj = Linear(cfg.d_model, cfg.n_head * hs, bias=False, std=std)
        self.k_proj = Linear(cfg.d_model, cfg.n_kv_head * hs, bias=False, std=std)
        self.v_proj = Linear(cfg.d_model, cfg.n_kv_head * hs, bias=False, std=std)
        self.o_proj = Linear(cfg.n_head * hs, cfg.d_model, bias=False, std=std)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, prefix, pos) -> Tensor:
        q = ops.rotary(self.q_proj(x), pos, self.n_head, self.rope_base)        # (B, T, C)
        k = ops.rotary(self.k_proj(x), pos, self.n_kv_head, self.rope_base)     # (B, T, Ckv)
        v = self.v_proj(x)                                                       # (B, T, Ckv)
        k, v = with_past(k, v, prefix, cache, layer)                           # (B, P + past + T, Ckv) each
        y = ops.attention(q, k, v, n_head=self.n_head, causal=True, n_kv_head=self.n_kv_head)
        return self.o_proj(y)


class LlamaDecoderLayer(Module):
    """x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x))."""

    def __init__(self, cfg: LlamaConfig):
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, prefix, pos) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, layer, prefix, pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Module):
    """The decoder stack without its head: embed_tokens, layers, norm (transformers' LlamaModel)."""

    def __init__(self, cfg: LlamaConfig):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class LlamaForCausalLM(CausalLM):
    """Llama decoder with its LM head: `logits, loss = model(ids, targets)` (forward: nn/causal_lm.py).

    Positions follow transformers (see CausalLM.forward): with a prefix of P keys and values (prefix tuning) or
    P cached ones, the tokens of a call sit at positions P .. P + T - 1.
    """

    name = "Llama"

    def __init__(self, config: LlamaConfig):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"LlamaForCausalLM needs a LlamaConfig, got {type(config).__name__}; build one with "
                            "LlamaConfig(**fields) or LlamaConfig.from_hf_dict(config_json)")
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, bias=False,
                                                                 std=0.02)

    @property
    def kv_width(self) -> int:
        return self.config.n_kv_head * self.config.head_dim

    def get_input_embeddings(self) -> Embedding:
        return self.model.embed_tokens

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache: KVCache | None = None):
        """The last hidden states norm(x), (B, T, C), of token ids or of inputs_embeds (see forward)."""
        x, prefix, pos = self.embed_with_positions(ids, inputs_embeds, prefix_kv, kv_cache)   # (B, T, C), (T,)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, kv_cache, i, None if prefix is None else prefix[i], pos)
        self.advance_cache(kv_cache, x.shape[1], prefix)
        return self.model.norm(x)

    def head(self, h: Tensor) -> Tensor:
        """Logits (..., vocab) = h @ embed_tokens^T (tied), or lm_head(h) as a module (so wrappers apply)."""
        return ops.linear(h, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def extra_repr(self) -> str:
        return f"{self.config}"
