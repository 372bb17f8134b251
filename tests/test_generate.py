"""Generation: the KV cache changes the cost, never the tokens; eos, context and mode are handled."""

from __future__ import annotations

import numpy as np
import pytest

import minipeft
from minipeft import backend, ops
from minipeft.generate import generate, generate_text
from minipeft.nn import GPT, GPTConfig, Module, Parameter
from minipeft.optim import AdamW
from minipeft.train import train

SEQ = [16, 36, 27, 8, 44, 23, 53, 4, 58, 50, 10, 2, 42, 34, 19, 47]  # 16 distinct ids, memorized below
PROMPT = SEQ[:4]


@pytest.fixture(scope="module")
def model():
    """A 'test' GPT in float64 trained to continue SEQ, so greedy output is a varied, known sequence."""
    prev_dtype, prev_rng = minipeft.get_default_dtype(), backend._state["rng"]
    minipeft.set_default_dtype(np.float64)
    try:
        minipeft.manual_seed(0)
        m = GPT(GPTConfig.from_preset("test"))
        x, y = np.asarray([SEQ[:-1]]), np.asarray([SEQ[1:]])
        train(m, lambda s: (x, y), steps=60, optimizer=AdamW(m.parameters(), lr=1e-2), progress=False, log_every=0)
    finally:
        minipeft.set_default_dtype(prev_dtype)
        backend._state["rng"] = prev_rng
    return m


def test_kv_cache_greedy_equals_recomputing_the_whole_sequence(model):
    cached = generate(model, PROMPT, 12, use_cache=True)
    assert cached == generate(model, PROMPT, 12, use_cache=False)
    assert cached == SEQ[4:]  # the memorized continuation: 12 different tokens, every cache step matters


def test_kv_cache_matches_on_an_unseen_prompt(model):
    prompt = [3, 17, 42, 5, 60]
    assert generate(model, prompt, 11) == generate(model, prompt, 11, use_cache=False)


def test_greedy_first_token_is_the_argmax_of_the_full_forward(model):
    logits, _ = model(np.asarray([PROMPT]))
    assert generate(model, PROMPT, 1)[0] == int(np.argmax(backend.to_numpy(logits.data)[0, -1]))


def test_kv_cache_sampling_equals_no_cache_with_a_fixed_seed(model):
    kw = dict(temperature=3.0, top_k=10, seed=7)
    cached = generate(model, PROMPT, 12, use_cache=True, **kw)
    assert cached == generate(model, PROMPT, 12, use_cache=False, **kw)
    assert cached == generate(model, PROMPT, 12, **kw)                      # same seed, same tokens
    assert cached != generate(model, PROMPT, 12, temperature=3.0, top_k=10, seed=8)
    assert cached != generate(model, PROMPT, 12)                            # sampling is not greedy here


def test_top_k_one_is_greedy(model):
    assert generate(model, PROMPT, 10, temperature=2.0, top_k=1, seed=3) == generate(model, PROMPT, 10)


def test_top_k_restricts_samples_to_the_k_most_likely(model):
    logits, _ = model(np.asarray([PROMPT]))
    top3 = set(np.argsort(backend.to_numpy(logits.data)[0, -1])[-3:].tolist())
    firsts = {generate(model, PROMPT, 1, temperature=5.0, top_k=3, seed=s)[0] for s in range(40)}
    assert firsts <= top3 and len(firsts) > 1


def test_eos_stops_generation_and_is_not_returned(model):
    out = generate(model, PROMPT, 12)
    assert generate(model, PROMPT, 12, eos_id=out[5]) == out[:5]
    assert generate(model, PROMPT, 12, eos_id=out[5], use_cache=False) == out[:5]


def test_too_long_raises_naming_both_numbers_or_truncates(model):
    prompt = list(range(10))
    with pytest.raises(ValueError, match=r"10 tokens \+ max_new_tokens=7 = 17 exceeds .* 16.*truncate=True"):
        generate(model, prompt, 7)
    out = generate(model, prompt, 7, truncate=True)
    assert len(out) == 7 and out == generate(model, prompt[-9:], 7)
    assert len(generate(model, prompt, 6)) == 6  # exactly the context: allowed


def test_generation_restores_the_training_mode(model):
    model.train()
    generate(model, PROMPT, 3)
    assert model.training and all(m.training for _, m in model.named_modules())
    model.eval()
    generate(model, PROMPT, 3)
    assert not model.training


def test_generation_records_no_graph_and_prefills_once(model, monkeypatch):
    # under no_grad nothing is kept for backward; with the cache the prompt runs once, then 1 token a step
    calls = []
    hidden_states = model.hidden_states

    def spy(ids, *args, **kwargs):
        h = hidden_states(ids, *args, **kwargs)
        calls.append((np.asarray(ids).shape[1], h.requires_grad))
        return h

    monkeypatch.setattr(model, "hidden_states", spy)
    generate(model, PROMPT, 4)
    assert calls == [(4, False), (1, False), (1, False), (1, False)]
    calls.clear()
    generate(model, PROMPT, 3, use_cache=False)
    assert calls == [(4, False), (5, False), (6, False)]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompt_ids=[]), ValueError, "empty"),
    (dict(prompt_ids=[1, 64]), ValueError, r"\[0, 64\)"),
    (dict(prompt_ids=[[1, 2], [3, 4]]), ValueError, "one sequence"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
])
def test_bad_arguments_raise(model, kwargs, exc, match):
    args = dict(prompt_ids=PROMPT, max_new_tokens=3) | kwargs
    with pytest.raises(exc, match=match):
        generate(model, args.pop("prompt_ids"), args.pop("max_new_tokens"), **args)


def test_zero_new_tokens_and_array_prompt(model):
    assert generate(model, PROMPT, 0) == []
    assert generate(model, np.asarray(PROMPT), 4) == generate(model, PROMPT, 4)


class _CharTokenizer:
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 64 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(65 + i % 26) for i in ids)


def test_generate_text_round_trips_through_the_tokenizer(model):
    tok = _CharTokenizer()
    ids = generate(model, tok.encode("hi!"), 5)
    assert generate_text(model, tok, "hi!", 5) == tok.decode(ids)
    tok.eos_id = ids[2]
    assert generate_text(model, tok, "hi!", 5) == tok.decode(ids[: ids.index(ids[2])])


def test_generates_through_a_peft_model_with_and_without_cache(keep_rng):
    from minipeft.peft import LoraConfig, get_peft_model  # noqa: PLC0415 (keeps this file's imports to the core)

    minipeft.manual_seed(0)
    base = GPT(GPTConfig.from_preset("test"))
    plain = generate(base, PROMPT, 10)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted = generate(peft, PROMPT, 10)
    assert adapted == generate(peft, PROMPT, 10, use_cache=False)
    assert adapted != plain  # the adapter (B random) changes the model, so this is not the base talking


# ---- soft prompts: how a prefix- or prompt-tuning tuner drives the model, with and without the cache ---------
class _PrefixTuned(Module):
    """A prefix-tuning tuner in miniature: per-layer (k, v) prefixes, passed only on a call that starts a sequence
    (no cache, or an empty one); after that the cache already holds them."""

    def __init__(self, model: GPT, P: int, seed: int):
        self.model = model
        cfg = model.config
        rng = np.random.default_rng(seed)
        # std 10: keys this large draw attention away from the memorized tokens (std 1 leaves greedy output as is)
        self.prefix = Parameter(rng.standard_normal((cfg.n_layer, 2, P, cfg.d_model)) * 10.0)   # (L, k/v, P, C)

    def get_base_model(self) -> GPT:
        return self.model

    def hidden_states(self, ids=None, *, kv_cache=None, **kwargs):
        prefix = None
        if kv_cache is None or kv_cache.empty:
            prefix = [(ops.getitem(self.prefix, (i, 0)), ops.getitem(self.prefix, (i, 1)))
                      for i in range(self.model.config.n_layer)]
        return self.model.hidden_states(ids, prefix_kv=prefix, kv_cache=kv_cache, **kwargs)

    def head(self, h):
        return self.model.head(h)


class _PromptTuned(Module):
    """A prompt-tuning tuner in miniature: n virtual token embeddings in front of the first call's tokens; the
    hidden states of the virtual positions are dropped, so they line up with ids (as the real tuner's)."""

    def __init__(self, model: GPT, n: int, seed: int):
        self.model, self.n = model, n
        rng = np.random.default_rng(seed)
        self.prompt = Parameter(rng.standard_normal((n, model.config.d_model)))          # (n, C)

    def get_base_model(self) -> GPT:
        return self.model

    def hidden_states(self, ids, *, kv_cache=None):
        if kv_cache is not None and not kv_cache.empty:
            return self.model.hidden_states(ids, kv_cache=kv_cache)                       # the prompt is cached
        tokens = self.model.wte(ids)                                                      # (B, T, C)
        virtual = ops.broadcast_to(self.prompt, (tokens.shape[0], self.n, tokens.shape[2]))
        h = self.model.hidden_states(inputs_embeds=ops.concat([virtual, tokens], axis=1), kv_cache=kv_cache)
        return ops.getitem(h, (slice(None), slice(self.n, None)))

    def head(self, h):
        return self.model.head(h)


@pytest.mark.parametrize("tuner", [_PrefixTuned, _PromptTuned])
def test_a_soft_prompt_generates_the_same_tokens_with_and_without_the_cache(model, tuner):
    tuned = tuner(model, 3, seed=1)
    out = generate(tuned, PROMPT, 9)
    assert out == generate(tuned, PROMPT, 9, use_cache=False)
    assert out != generate(model, PROMPT, 9)            # the soft prompt changes the continuation
    sampled = dict(temperature=2.0, top_k=8, seed=4)
    assert generate(tuned, PROMPT, 9, **sampled) == generate(tuned, PROMPT, 9, use_cache=False, **sampled)


@pytest.mark.parametrize("use_cache", [True, False])
def test_virtual_tokens_and_prefix_entries_count_against_the_context_in_generation(model, use_cache):
    # 4 prompt + 12 new = 16 = the context; the last new token is never fed back, so 15 positions are run:
    # room for one virtual token or prefix entry but not two (a prefix takes positions, as in Hugging Face)
    assert len(generate(_PrefixTuned(model, 1, seed=2), PROMPT, 12, use_cache=use_cache)) == 12
    assert len(generate(_PromptTuned(model, 1, seed=2), PROMPT, 12, use_cache=use_cache)) == 12
    for tuner in (_PrefixTuned, _PromptTuned):
        with pytest.raises(ValueError, match="17 .*exceeds? the context length 16"):
            generate(tuner(model, 2, seed=2), PROMPT, 12, use_cache=use_cache)


def test_the_head_runs_on_the_last_position_only(model, monkeypatch):
    """Only the last position's logits pick a token, so the (C x vocab) head gets one row per step, prefill too."""
    rows = []
    head = model.head

    def spy(h):
        rows.append(h.shape[1])
        return head(h)

    monkeypatch.setattr(model, "head", spy)
    generate(model, PROMPT, 3)
    assert rows == [1, 1, 1]
