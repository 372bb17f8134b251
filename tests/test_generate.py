"""Generation: the KV cache changes the cost, never the tokens; eos, context and mode are handled."""

from __future__ import annotations

import numpy as np
import pytest

import minipeft
from minipeft import backend
from minipeft.generate import generate, generate_text
from minipeft.nn import GPT, GPTConfig
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
    forward = model.forward

    def spy(ids, *args, **kwargs):
        logits, loss = forward(ids, *args, **kwargs)
        calls.append((np.asarray(ids).shape[1], logits.requires_grad))
        return logits, loss

    monkeypatch.setattr(model, "forward", spy)
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
