"""Spec of the GPT hooks soft prompts need: inputs_embeds (virtual tokens), per-layer key/value prefixes
(prefix_kv), and a KV cache that holds Tensors, so prefixes and cached calls carry gradients."""

from __future__ import annotations

import re

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import token_ids
from test_gpt import CTX, C, L, V, build_gpt, randomized64

from minipeft import Tensor, no_grad, ops, to_numpy
from minipeft.nn import Module


@pytest.fixture(scope="module")
def gpt64():
    return randomized64(seed=5)


def _prefix(P: int, seed: int = 0, B: int | None = None, requires_grad: bool = False, scale: float = 1.0):
    """n_layer pairs (k, v) of N(0, scale^2) float64 Tensors, (P, C) or (B, P, C)."""
    rng = np.random.default_rng(seed)
    shape = (P, C) if B is None else (B, P, C)
    return [tuple(Tensor(rng.standard_normal(shape) * scale, requires_grad=requires_grad) for _ in "kv")
            for _ in range(L)]


# grad_check on the (B, T, V) logits of a randomized64 GPT: loss = sum(logits * dout) adds ~400 terms of size
# ~8, so its roundoff is ~1e-14 and the central difference's ~1e-14 / eps. eps = 1e-5 keeps that near 1e-9 with
# the truncation error (eps^2 |f'''| / 6) below it: measured maxdiff 7e-9 on gradients of size ~1 (2.5e-8 at the
# default eps = 1e-6). atol = 1e-7 leaves 14x margin; a wrong gradient is off by O(1).
GRAD_TOL = dict(eps=1e-5, rtol=1e-5, atol=1e-7)


def _logits(model, *args, **kwargs) -> np.ndarray:
    with no_grad():
        return model(*args, **kwargs)[0].numpy()


# ---- inputs_embeds -----------------------------------------------------------------------------------------
def test_inputs_embeds_of_wte_gives_bit_identical_logits():
    model = build_gpt(3)
    ids = np.random.default_rng(0).integers(0, V, (2, 9))
    with no_grad():
        embeds = model.wte(ids)
    assert np.array_equal(_logits(model, inputs_embeds=embeds), _logits(model, ids))


def test_hidden_states_then_head_is_forward_and_the_untied_head_is_called_as_a_module():
    class Doubled(Module):                          # stands in for a wrapper a PEFT method puts on lm_head
        def __init__(self, inner):
            self.inner = inner

        def forward(self, h):
            return self.inner(h) * 2.0

    model = build_gpt(1, tie_embeddings=False)
    ids = np.arange(12).reshape(2, 6)
    logits = _logits(model, ids)
    with no_grad():
        assert np.array_equal(model.head(model.hidden_states(ids)).numpy(), logits)
    model.lm_head = Doubled(model.lm_head)
    np.testing.assert_array_equal(_logits(model, ids), 2.0 * logits)


def test_grad_of_logits_wrt_inputs_embeds_matches_central_differences(gpt64):
    embeds = np.random.default_rng(1).standard_normal((2, 3, C))
    grad_check(lambda e: gpt64(inputs_embeds=e)[0], [embeds], "GPT(inputs_embeds)", **GRAD_TOL)


def test_virtual_tokens_take_positions_and_count_against_the_context():
    model = build_gpt(0)
    with no_grad():
        prompt = model.wte(np.zeros((1, 4), np.int64))
    ids = np.arange(CTX - 4).reshape(1, -1)
    full = ops.concat([prompt, model.wte(ids)], axis=1)            # 4 virtual + 12 real = CTX positions
    model(inputs_embeds=full)[0].sum().backward()
    assert to_numpy(model.wpe.weight.grad).any(axis=1).all()       # every position row was used
    with pytest.raises(ValueError, match=r"sequence of 17 positions \(tokens and virtual tokens\) exceeds the "
                                         r"context length 16; truncate the input to at most 16"):
        model(inputs_embeds=ops.concat([prompt, model.wte(np.arange(CTX - 3)[None])], axis=1))


# ---- prefix_kv ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True])
def test_grad_of_logits_wrt_prefix_k_and_v_matches_central_differences(gpt64, batched):
    B, P, T = 2, 2, 3
    ids = np.random.default_rng(2).integers(0, V, (B, T))
    prefix = [to_numpy(t.data) for pair in _prefix(P, seed=3, B=B if batched else None) for t in pair]

    def f(*kv):
        return gpt64(ids, prefix_kv=[(kv[2 * i], kv[2 * i + 1]) for i in range(L)])[0]

    grad_check(f, prefix, f"GPT(prefix_kv, {'batched' if batched else 'shared'})", **GRAD_TOL)


def test_grad_of_the_loss_wrt_a_shared_prefix_sums_over_the_batch(gpt64):
    # a (P, C) prefix is broadcast over the batch, so its gradient is the sum of the per-row prefixes' gradients
    ids = np.random.default_rng(4).integers(0, V, (3, 5))
    shared = _prefix(2, seed=5, requires_grad=True)
    per_row = [tuple(Tensor(np.broadcast_to(t.numpy(), (3, 2, C)).copy(), requires_grad=True) for t in pair)
               for pair in shared]
    gpt64(ids, ids, prefix_kv=shared)[1].backward()
    gpt64(ids, ids, prefix_kv=per_row)[1].backward()
    for a, b in zip(shared, per_row, strict=True):
        for ta, tb in zip(a, b, strict=True):
            np.testing.assert_allclose(to_numpy(ta.grad), to_numpy(tb.grad.sum(axis=0)), rtol=1e-12, atol=1e-14)
            assert np.abs(to_numpy(ta.grad)).max() > 1e-3


@settings(max_examples=10)
@given(st.data())
def test_causal_with_a_prefix_later_tokens_leave_earlier_logits_but_the_prefix_moves_all(gpt64, data):
    B, T = data.draw(st.integers(1, 2)), data.draw(st.integers(2, CTX))
    t = data.draw(st.integers(0, T - 2))
    ids = data.draw(token_ids(V, (B, T)))
    changed = ids.copy()
    changed[:, t + 1:] = (ids[:, t + 1:] + data.draw(token_ids(V - 1, (B, T - t - 1))) + 1) % V
    prefix = _prefix(3, seed=data.draw(st.integers(0, 100)))
    a = _logits(gpt64, ids, prefix_kv=prefix)
    b = _logits(gpt64, changed, prefix_kv=prefix)
    # float64 and masked scores of exactly -inf: earlier positions are equal up to summation order
    np.testing.assert_allclose(b[:, :t + 1], a[:, :t + 1], rtol=0, atol=1e-12)
    assert np.abs(b[:, t + 1] - a[:, t + 1]).max() > 1e-6
    other = _logits(gpt64, ids, prefix_kv=_prefix(3, seed=1000))
    assert (np.abs(other - a).max(axis=-1) > 1e-6).all()            # every position of every row moved


def test_an_empty_prefix_equals_no_prefix(gpt64):
    ids = np.random.default_rng(6).integers(0, V, (2, 7))
    plain = _logits(gpt64, ids)
    assert np.array_equal(_logits(gpt64, ids, prefix_kv=_prefix(0)), plain)
    assert np.array_equal(_logits(gpt64, ids, prefix_kv=_prefix(0, B=2)), plain)
    assert np.array_equal(_logits(gpt64, ids, prefix_kv=None), plain)


def test_the_tokens_after_a_prefix_of_p_entries_sit_at_positions_p_onwards(gpt64):
    """Hugging Face's rule (its prefix is transformers' past_key_values, a position per entry): after a prefix of
    5 entries, 6 tokens take positions 5..10, and 5 + T must fit the context."""
    ids = np.random.default_rng(7).integers(0, V, (1, CTX))
    gpt64.zero_grad()
    gpt64(ids[:, :6], prefix_kv=_prefix(5))[0].sum().backward()
    used = to_numpy(gpt64.wpe.weight.grad).any(axis=1)
    assert used[5:11].all() and not used[:5].any() and not used[11:].any()
    gpt64.zero_grad()
    assert _logits(gpt64, ids[:, :11], prefix_kv=_prefix(5)).shape == (1, 11, V)    # 5 + 11 = CTX fits
    with pytest.raises(ValueError, match=r"a prefix of 5 entries \+ 12 tokens = 17 positions exceed the context "
                                         r"length 16 .*at most 11 tokens"):
        gpt64(ids[:, :12], prefix_kv=_prefix(5))


def test_a_prefix_of_cached_keys_equals_running_those_tokens_first():
    """The prefix is each layer's keys and values, seen by every query, and its entries take the positions before
    the tokens: a prefix made of the cached keys and values of tokens u gives exactly the logits of running u + w
    (what Hugging Face's past_key_values means)."""
    model = randomized64(seed=8)
    rng = np.random.default_rng(8)
    u, w = rng.integers(0, V, (2, 4)), rng.integers(0, V, (2, 5))
    full = _logits(model, np.concatenate([u, w], axis=1))
    cache = model.new_kv_cache()
    with no_grad():
        model(u, kv_cache=cache)
    prefix = [(cache.k[i], cache.v[i]) for i in range(L)]
    np.testing.assert_allclose(_logits(model, w, prefix_kv=prefix), full[:, 4:], rtol=0, atol=1e-10)


# ---- the KV cache with a prefix ----------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(st.data())
def test_cached_chunks_with_a_prefix_equal_one_call_in_logits_and_gradients(data):
    model = randomized64(seed=9)
    B, P = data.draw(st.integers(1, 2)), data.draw(st.integers(0, 3))
    T = data.draw(st.integers(1, CTX - P))                           # the prefix takes positions too
    ids = data.draw(token_ids(V, (B, T)))
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=3)) if T > 1 else [])
    dout = np.random.default_rng(T).standard_normal((B, T, V))

    def run(chunks, use_cache):
        model.zero_grad()
        prefix = _prefix(P, seed=10, requires_grad=True)
        cache = model.new_kv_cache() if use_cache else None
        pieces = []
        for i, (lo, hi) in enumerate(chunks):
            pieces.append(model(ids[:, lo:hi], prefix_kv=prefix if i == 0 else None, kv_cache=cache)[0])
            if cache is not None:
                assert (cache.prefix_length, cache.length) == (P, hi)
        loss = sum((p * dout[:, lo:hi]).sum() for p, (lo, hi) in zip(pieces, chunks, strict=True))
        loss.backward()
        grads = [to_numpy(t.grad) for pair in prefix for t in pair] + [to_numpy(p.grad) for p in model.parameters()]
        return np.concatenate([p.numpy() for p in pieces], axis=1), grads

    full, g_full = run([(0, T)], use_cache=False)
    cached, g_cached = run(list(zip([0, *cuts], [*cuts, T], strict=True)), use_cache=True)
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-10)
    for a, b in zip(g_cached, g_full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_prefix_to_a_non_empty_cache_raises_and_leaves_it_alone(gpt64):
    cache = gpt64.new_kv_cache()
    assert cache.empty
    gpt64(np.zeros((1, 3), np.int64), prefix_kv=_prefix(2), kv_cache=cache)
    assert not cache.empty and (cache.prefix_length, cache.length) == (2, 3) and cache.k[0].shape == (1, 5, C)
    with pytest.raises(ValueError, match="prefix_kv was passed with a KV cache that is not empty.*kv_cache.empty"):
        gpt64(np.zeros((1, 1), np.int64), prefix_kv=_prefix(2), kv_cache=cache)
    assert (cache.prefix_length, cache.length) == (2, 3) and cache.k[1].shape == (1, 5, C)


def test_cache_context_check_counts_the_prefix_too(gpt64):
    cache = gpt64.new_kv_cache()
    gpt64(np.zeros((1, 10), np.int64), prefix_kv=_prefix(4), kv_cache=cache)
    assert cache.next_position == 14
    gpt64(np.zeros((1, 2), np.int64), kv_cache=cache)              # 4 prefix + 12 tokens = 16 positions fit
    with pytest.raises(ValueError, match="sequence of 17 tokens exceeds the context length 16"):
        gpt64(np.zeros((1, 1), np.int64), kv_cache=cache)
    assert cache.length == 12


# ---- errors ------------------------------------------------------------------------------------------------
E = Tensor(np.zeros((1, 3, C)))


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(), ValueError, "pass exactly one of ids and inputs_embeds, got neither"),
    (dict(ids=np.zeros((1, 3), np.int64), inputs_embeds=E), ValueError,
     "pass exactly one of ids and inputs_embeds, got both"),
    (dict(inputs_embeds=np.zeros((1, 3, C))), TypeError, r"inputs_embeds must be a Tensor, got ndarray; wrap"),
    (dict(inputs_embeds=Tensor(np.zeros((3, C)))), ValueError,
     re.escape("inputs_embeds must have shape (batch, time, d_model=16), got (3, 16); use x[None]")),
    (dict(inputs_embeds=Tensor(np.zeros((1, 3, 8)))), ValueError, re.escape("got (1, 3, 8)")),
    (dict(inputs_embeds=Tensor(np.zeros((1, 3, C), np.float32))), TypeError,
     "inputs_embeds has dtype float32 but the model is float64; convert it"),
])
def test_bad_inputs_embeds_raise_naming_the_value_and_the_fix(gpt64, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        gpt64(**kwargs)


def _bad_prefix(kind: str):
    good = _prefix(2)
    if kind == "not a list":
        return good[0][0]
    if kind == "too short":
        return good[:1]
    if kind == "not a pair":
        return [good[0], good[1][0]]
    if kind == "array":
        return [good[0], (good[1][0], good[1][1].numpy())]
    if kind == "4-D":
        return [good[0], (Tensor(np.zeros((1, 1, 2, C))), good[1][1])]
    if kind == "wrong C":
        return [good[0], (Tensor(np.zeros((2, 8))), good[1][1])]
    if kind == "wrong batch":
        return [good[0], (Tensor(np.zeros((3, 2, C))), good[1][1])]
    if kind == "dtype":
        return [good[0], (good[1][0], Tensor(np.zeros((2, C), np.float32)))]
    if kind == "k/v P":
        return [good[0], (good[1][0], Tensor(np.zeros((3, C))))]
    if kind == "layer P":
        return [good[0], tuple(Tensor(np.zeros((1, C))) for _ in "kv")]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, exc, message", [
    ("not a list", ValueError, r"prefix_kv must be a list of n_layer=2 pairs \(k, v\), one per layer, got Tensor"),
    ("too short", ValueError, "n_layer=2 pairs .* got length 1"),
    ("not a pair", ValueError, r"prefix_kv\[1\] must be a pair \(k, v\), got Tensor"),
    ("array", TypeError, r"prefix_kv\[1\] v must be a Tensor, got ndarray; wrap"),
    ("4-D", ValueError, re.escape("prefix_kv[1] k has shape (1, 1, 2, 16); it must be (P, d_model=16), shared by "
                                  "the batch, or (batch=2, P, 16)")),
    ("wrong C", ValueError, re.escape("prefix_kv[1] k has shape (2, 8)")),
    ("wrong batch", ValueError, re.escape("prefix_kv[1] k has shape (3, 2, 16)")),
    ("dtype", TypeError, r"prefix_kv\[1\] v has dtype float32 but the model is float64"),
    ("k/v P", ValueError, r"prefix_kv\[1\] v has prefix length 3 but prefix_kv\[0\] k has 2; every layer"),
    ("layer P", ValueError, r"prefix_kv\[1\] k has prefix length 1 but prefix_kv\[0\] k has 2"),
])
def test_bad_prefix_kv_raises_naming_the_layer_and_the_fix(gpt64, kind, exc, message):
    with pytest.raises(exc, match=message):
        gpt64(np.zeros((2, 3), np.int64), prefix_kv=_bad_prefix(kind))


def test_a_cache_of_another_batch_size_raises(gpt64):
    cache = gpt64.new_kv_cache()
    gpt64(np.zeros((2, 3), np.int64), kv_cache=cache)
    with pytest.raises(ValueError, match="cache holds a batch of 2 sequences but the input has 1; use one cache"):
        gpt64(np.zeros((1, 1), np.int64), kv_cache=cache)
