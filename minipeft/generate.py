"""Autoregressive generation for one sequence: greedy or temperature + top-k sampling, with a KV cache.

With the cache the prompt is run once (prefill) and every later step feeds only the newest token,
attending to the keys and values stored for the earlier ones. Without it the whole sequence is
re-run each step; both give the same tokens, which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from minipeft import backend, ops
from minipeft.autograd import no_grad


def _pick(logits: np.ndarray, temperature: float, top_k: int | None, gen: np.random.Generator) -> int:
    """One token id from a (vocab,) row of logits: argmax if temperature == 0, else a sample."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]                        # the k-th largest logit
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(min(np.searchsorted(np.cumsum(p), gen.random(), side="right"), z.size - 1))


def core_model(model):
    """The GPT that holds config and new_kv_cache: the model itself, or a PeftModel's base model."""
    if hasattr(model, "config") and hasattr(model, "new_kv_cache"):
        return model
    if hasattr(model, "get_base_model"):
        return core_model(model.get_base_model())
    raise TypeError(f"generate: {type(model).__name__} has no .config/.new_kv_cache(); pass a GPT or a PeftModel")


def virtual_positions(model) -> int:
    """Context positions a PEFT method puts in front of every input (prompt tuning's virtual tokens), else 0."""
    tuner = getattr(model, "base_model", None)
    return int(getattr(tuner, "virtual_positions", 0))


def context_left(model) -> int:
    """Positions left for tokens: the context length less the virtual tokens a soft prompt takes."""
    return core_model(model).config.context_length - virtual_positions(model)


def _check_prompt(prompt_ids, vocab_size: int) -> list[int]:
    ids = backend.to_numpy(prompt_ids) if not isinstance(prompt_ids, (list, tuple)) else np.asarray(prompt_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"generate: prompt_ids must be one sequence (a list or 1-D array), got shape {ids.shape}; "
                         "call generate once per sequence")
    if ids.size == 0:
        raise ValueError("generate: prompt_ids is empty; pass at least one token (e.g. the tokenizer's BOS id)")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"generate: prompt_ids must be integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"generate: prompt token ids must be in [0, {vocab_size}), got min {ids.min()} and max "
                         f"{ids.max()}; was the prompt encoded with this model's tokenizer?")
    return [int(t) for t in ids]


def _last_logits(model, ids: list[int], cache):
    """Logits (1, 1, vocab) of the last position only: the head (C x vocab, the largest product of a real LLM's
    forward) runs on the one row whose logits pick the next token, not on every prompt position."""
    h = model.hidden_states(np.asarray([ids]), kv_cache=cache)      # (1, T, C)
    return model.head(ops.getitem(h, (slice(None), slice(-1, None))))


def generate(model, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None, use_cache: bool = True, seed: int | None = None,
             truncate: bool = False, on_token: Callable[[int], None] | None = None) -> list[int]:
    """The new token ids that `model` continues `prompt_ids` with (eos ends generation and is not returned).

    on_token(id) is called with each new token as soon as it is picked (to stream text as it is produced).

    temperature=0 is greedy; otherwise logits/temperature are sampled, restricted to the top_k largest
    when given, from a numpy Generator seeded with `seed`. The prompt plus max_new_tokens must fit the
    context length; truncate=True keeps only the prompt's last tokens instead of raising.
    """
    core = core_model(model)
    cfg = core.config
    ctx, n_virtual = context_left(model), virtual_positions(model)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not 0 <= temperature < math.inf:   # inf would sample uniformly, whatever the model says
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"generate: top_k must be None or an int >= 1, got {top_k!r}")
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer))
                               or not 0 <= eos_id < cfg.vocab_size):
        raise ValueError(f"generate: eos_id must be None or a token id in [0, {cfg.vocab_size}), got {eos_id!r}; "
                         "pass tokenizer.eos_id (an id that never comes up would never stop generation)")
    prompt = _check_prompt(prompt_ids, cfg.vocab_size)
    if ctx < 1:
        raise ValueError(f"generate: the model's {n_virtual} virtual tokens fill its context_length "
                         f"{cfg.context_length}, leaving no position for a token; use at most "
                         f"{cfg.context_length - 1} virtual tokens")
    if len(prompt) + max_new_tokens > ctx:
        if not truncate or max_new_tokens >= ctx:
            room = (f"the {ctx} positions its {n_virtual} virtual tokens leave of the model's context_length "
                    f"{cfg.context_length}" if n_virtual else f"the model's context_length {ctx}")
            raise ValueError(f"generate: prompt of {len(prompt)} tokens + max_new_tokens={max_new_tokens} = "
                             f"{len(prompt) + max_new_tokens} exceeds {room}; shorten the "
                             f"prompt, lower max_new_tokens to {max(ctx - len(prompt), 0)}, or pass truncate=True "
                             "to keep only the prompt's last tokens")
        prompt = prompt[len(prompt) + max_new_tokens - ctx:]
    if max_new_tokens == 0:
        return []
    gen = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        with no_grad():
            cache = core.new_kv_cache() if use_cache else None
            seq = list(prompt)
            logits = _last_logits(model, seq, cache)
            for i in range(max_new_tokens):
                tok = _pick(backend.to_numpy(logits.data[0, -1]), temperature, top_k, gen)
                if eos_id is not None and tok == eos_id:
                    break
                out.append(tok)
                seq.append(tok)
                if on_token is not None:
                    on_token(tok)
                if i == max_new_tokens - 1:
                    break  # the last token needs no forward pass
                # with the cache one new position, without it the whole sequence again
                logits = _last_logits(model, [tok] if use_cache else seq, cache)
    finally:
        model.train(was_training)
    return out


class TextStreamer:
    """An on_token callback that writes the decoded text as it grows (transformers' TextStreamer, simplified).

    Tokens are decoded together, not one by one: a character can span tokens (byte-level BPE splits UTF-8), so
    text is written only up to what decodes whole, i.e. not ending in the replacement character U+FFFD.
    """

    def __init__(self, tokenizer, write: Callable[[str], object] | None = None):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0
        self.write = write or (lambda text: print(text, end="", flush=True))

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd") and len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, stream: bool = False, **kwargs) -> str:
    """Encode `prompt`, generate (see generate; eos_id defaults to tokenizer.eos_id) and decode the new tokens.

    stream=True prints the text as it is produced (TextStreamer)."""
    enc = tokenizer.encode(prompt)
    ids = list(getattr(enc, "ids", enc))  # a list of ids, or a Hugging Face `Encoding`
    kwargs.setdefault("eos_id", getattr(tokenizer, "eos_id", None))
    if stream:
        kwargs["on_token"] = TextStreamer(tokenizer)
    return tokenizer.decode(generate(model, ids, max_new_tokens, **kwargs))
