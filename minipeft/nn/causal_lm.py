"""What every decoder-only language model here shares: the KV cache, the input checks and forward.

`CausalLM` is the base of the two models, the mini GPT (nn/gpt.py) and Llama (nn/llama.py). A subclass
builds its layers and writes `hidden_states` (token ids or embeddings -> the last hidden states, (B, T, C))
and `head` (hidden states -> logits); `forward` is the same for both: `logits, loss = model(ids, targets)`.
"""

from __future__ import annotations

from minipeft import backend, ops
from minipeft.autograd import Tensor
from minipeft.nn.layers import Linear
from minipeft.nn.module import Module


class KVCache:
    """Per-layer keys and values seen so far (Tensors, so a cached forward carries gradients).

    k[i] and v[i] are (B, prefix_length + length, Ckv): first a prefix (prefix_kv of the first call),
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


def with_past(k: Tensor, v: Tensor, prefix, cache: KVCache | None, layer: int) -> tuple[Tensor, Tensor]:
    """This call's keys and values (B, T, Ckv) behind a prefix's (P) and the cache's earlier ones (past): each
    (B, P + past + T, Ckv), stored back in the cache. The attention op treats the queries as the LAST T of these
    positions, so every query sees the whole prefix, the past, and the tokens up to itself."""
    if prefix is not None:
        k, v = ops.concat([prefix[0], k], axis=1), ops.concat([prefix[1], v], axis=1)
    if cache is not None:
        if cache.k[layer] is not None:
            k = ops.concat([cache.k[layer], k], axis=1)
            v = ops.concat([cache.v[layer], v], axis=1)
        cache.k[layer], cache.v[layer] = k, v
    return k, v


class CausalLM(Module):
    """Base of the decoder-only models: checks of ids, embeddings and prefixes, forward, the KV cache.

    A subclass sets `config` (with vocab_size, context_length, d_model, n_layer) and writes
    `get_input_embeddings()`, `hidden_states(...)`, `head(h)` and, where the head is a plain matrix,
    `linear_head()`; `kv_width` is the width of one layer's keys and values (d_model, or less with grouped-query
    attention).
    """

    name = "model"     # how error messages name the model

    @property
    def kv_width(self) -> int:
        return self.config.d_model

    def get_input_embeddings(self) -> Module:
        """The token embedding table (an Embedding), as transformers' PreTrainedModel.get_input_embeddings()."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_input_embeddings()")

    def hidden_states(self, ids=None, *, inputs_embeds=None, prefix_kv=None, kv_cache: KVCache | None = None):
        raise NotImplementedError(f"{type(self).__name__} does not implement hidden_states()")

    def head(self, h: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement head()")

    def linear_head(self) -> tuple[Tensor, Tensor | None] | None:
        """(W, b) when head(h) is the plain h W^T + b, so the loss can run it in chunks of rows
        (minipeft.loss.causal_lm_loss): the token embedding's weight when the head is tied (lm_head None), else
        lm_head's while it is a plain Linear; None when a module wraps lm_head (an adapter, modules_to_save),
        whose forward head(h) must run."""
        if self.lm_head is None:
            return self.get_input_embeddings().weight, None
        return (self.lm_head.weight, self.lm_head.bias) if type(self.lm_head) is Linear else None

    def embed_with_positions(self, ids, inputs_embeds, prefix_kv, kv_cache: KVCache | None):
        """(token embeddings x (B, T, C), prefix as n_layer pairs or None, the tokens' positions (T,)), checked.

        Positions follow transformers (see forward): after a cache's entries, or after a new prefix's P."""
        past = 0 if kv_cache is None else kv_cache.next_position
        x = self._embed(ids, inputs_embeds, past)                       # (B, T, C)
        B, T = x.shape[:2]
        if kv_cache is not None and not kv_cache.empty and kv_cache.k[0].shape[0] != B:
            raise ValueError(f"{self.name}: the KV cache holds a batch of {kv_cache.k[0].shape[0]} sequences but "
                             f"the input has {B}; use one cache per batch (model.new_kv_cache())")
        prefix = self._check_prefix(prefix_kv, B, kv_cache)
        if prefix is not None:     # a new prefix of P entries takes positions 0..P-1; the tokens come after it
            past = prefix[0][0].shape[1]
            self._check_prefix_fits(past, T)
        return x, prefix, backend.xp().arange(past, past + T)

    @staticmethod
    def advance_cache(kv_cache: KVCache | None, T: int, prefix) -> None:
        """Count this call's T tokens (and a first call's prefix) in the cache the layers appended to."""
        if kv_cache is not None:
            kv_cache.length += T
            if prefix is not None:
                kv_cache.prefix_length = prefix[0][0].shape[1]

    def check_input(self, ids, past: int = 0):
        """Validate token ids (B, T): integer dtype, 2-D, within the context; returns the array."""
        try:
            ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        except ValueError:   # NumPy: "inhomogeneous shape"
            raise ValueError(f"{self.name}: token ids must be a rectangular (batch, time) array, got sequences "
                             "of different lengths; pad them to one length (minipeft.workshop.data.collate_sft does) "
                             "or run them one at a time") from None
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: token ids must be integers, got dtype {ids.dtype}; encode text with the "
                            "tokenizer")
        if ids.ndim != 2:
            raise ValueError(f"{self.name}: token ids must have shape (batch, time), got {ids.shape}; "
                             "use ids[None] for a single sequence")
        if 0 in ids.shape:
            raise ValueError(f"{self.name}: token ids have shape {ids.shape}, an empty batch; pass at least one "
                             "sequence of at least one token (is batch_size 0?)")
        self._check_fits(ids.shape[1], past)
        return ids

    def _check_fits(self, T: int, past: int, what: str = "tokens") -> None:
        if past + T > self.config.context_length:
            raise ValueError(f"{self.name}: sequence of {past + T} {what} exceeds the context length "
                             f"{self.config.context_length}; truncate the input to at most "
                             f"{self.config.context_length - past} {what}")

    def _check_prefix_fits(self, P: int, T: int) -> None:
        ctx = self.config.context_length
        if P + T > ctx:
            raise ValueError(f"{self.name}: a prefix of {P} entries + {T} tokens = {P + T} positions exceed the "
                             f"context length {ctx} (the prefix takes positions 0..{P - 1}); truncate the input to "
                             f"at most {ctx - P} tokens, or use a shorter prefix")

    def _embed(self, ids, inputs_embeds, past: int) -> Tensor:
        """Token embeddings (B, T, C): wte(ids), or inputs_embeds checked for shape and dtype."""
        if (ids is None) == (inputs_embeds is None):
            raise ValueError(f"{self.name}: pass exactly one of ids and inputs_embeds, got "
                             f"{'both' if ids is not None else 'neither'}; inputs_embeds (B, T, C) replaces "
                             "wte(ids), e.g. to put soft-prompt vectors in front of the tokens' embeddings")
        if ids is not None:
            return self.get_input_embeddings()(self.check_input(ids, past))
        C, dtype = self.config.d_model, self.get_input_embeddings().weight.dtype
        if not isinstance(inputs_embeds, Tensor):
            raise TypeError(f"{self.name}: inputs_embeds must be a Tensor, got {type(inputs_embeds).__name__}; "
                            "wrap an array as minipeft.Tensor(array)")
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != C:
            raise ValueError(f"{self.name}: inputs_embeds must have shape (batch, time, d_model={C}), got "
                             f"{inputs_embeds.shape}; use x[None] for a single sequence")
        if 0 in inputs_embeds.shape:
            raise ValueError(f"{self.name}: inputs_embeds has shape {inputs_embeds.shape}, an empty batch; pass at "
                             "least one sequence of at least one position")
        if inputs_embeds.dtype != dtype:
            raise TypeError(f"{self.name}: inputs_embeds has dtype {inputs_embeds.dtype} but the model is {dtype}; "
                            f"convert it (or the model with .to({dtype}))")
        self._check_fits(inputs_embeds.shape[1], past, "positions (tokens and virtual tokens)")
        return inputs_embeds

    def _check_prefix(self, prefix_kv, B: int, cache: KVCache | None) -> list | None:
        """prefix_kv as n_layer pairs (k, v) of shape (B, P, Ckv); (P, Ckv) is broadcast over the batch."""
        if prefix_kv is None:
            return None
        L, C, dtype = self.config.n_layer, self.kv_width, self.get_input_embeddings().weight.dtype
        if cache is not None and not cache.empty:
            raise ValueError(f"{self.name}: prefix_kv was passed with a KV cache that is not empty; the prefix "
                             "enters the cache on the first call, so pass prefix_kv only while kv_cache.empty")
        if not isinstance(prefix_kv, (list, tuple)) or len(prefix_kv) != L:
            got = f"length {len(prefix_kv)}" if isinstance(prefix_kv, (list, tuple)) else type(prefix_kv).__name__
            raise ValueError(f"{self.name}: prefix_kv must be a list of n_layer={L} pairs (k, v), one per layer, "
                             f"got {got}")
        P, out = None, []
        for i, pair in enumerate(prefix_kv):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{self.name}: prefix_kv[{i}] must be a pair (k, v), got {type(pair).__name__}")
            for name, t in zip("kv", pair, strict=True):
                where = f"prefix_kv[{i}] {name}"
                if not isinstance(t, Tensor):
                    raise TypeError(f"{self.name}: {where} must be a Tensor, got {type(t).__name__}; wrap an array as "
                                    "minipeft.Tensor(array)")
                if t.ndim not in (2, 3) or t.shape[-1] != C or (t.ndim == 3 and t.shape[0] != B):
                    width = f"d_model={C}" if C == self.config.d_model else f"n_kv_head * head_dim={C}"
                    raise ValueError(f"{self.name}: {where} has shape {t.shape}; it must be (P, {width}), shared by "
                                     f"the batch, or (batch={B}, P, {C})")
                if t.dtype != dtype:
                    raise TypeError(f"{self.name}: {where} has dtype {t.dtype} but the model is {dtype}; convert it")
                if P is None:
                    P = t.shape[-2]
                if t.shape[-2] != P:
                    raise ValueError(f"{self.name}: {where} has prefix length {t.shape[-2]} but prefix_kv[0] k "
                                     f"has {P}; every layer's k and v must have the same P")
            out.append(tuple(t if t.ndim == 3 else ops.broadcast_to(t, (B, P, C)) for t in pair))
        return out

    def new_kv_cache(self) -> KVCache:
        """An empty cache for generate: pass it as kv_cache= to every call of one sequence batch."""
        return KVCache(self.config.n_layer)

    def forward(self, ids=None, targets=None, *, inputs_embeds=None, prefix_kv=None,
                kv_cache: KVCache | None = None, ignore_index: int = -100):
        """(logits (B, T, vocab), loss): loss is the mean cross-entropy over targets != ignore_index, or None.

        Positions: a token's position is the number of keys before it in its layer's attention, prefix entries
        and cached tokens included (Hugging Face transformers' rule, a position per cache entry), so a model
        given a prefix or a cache computes what the same weights compute in transformers. Every decoder in
        minipeft.nn follows this rule (learned position rows or rotary angles alike).
        inputs_embeds (B, T, C) replaces the token embeddings of ids (exactly one of the two); positions
        still apply, so virtual tokens (prompt tuning) take positions and count against context_length.
        prefix_kv: n_layer pairs (k, v), each (B, P, Ckv) or (P, Ckv), put in front of each layer's keys and
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
