"""Spec of rotary position embeddings: the op's equation and gradient, the relative-position property that is
RoPE's point, and a GPT built with position_embedding="rope" (gradients, KV cache, generation)."""

from __future__ import annotations

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st

import minipeft
from minipeft import Tensor, backend, no_grad, ops, to_numpy
from minipeft.generate import generate
from minipeft.nn import GPT, GPTConfig


def rope_reference(x, pos, n_head, base=10000.0):
    """The equation, one channel pair at a time, in float64 NumPy."""
    B, T, C = x.shape
    hs = C // n_head
    y = np.empty_like(x)
    for h in range(n_head):
        for i in range(hs // 2):
            a, b = h * hs + i, h * hs + i + hs // 2
            ang = np.asarray(pos, dtype=np.float64)[None, :] * base ** (-2 * i / hs)
            y[..., a] = x[..., a] * np.cos(ang) - x[..., b] * np.sin(ang)
            y[..., b] = x[..., a] * np.sin(ang) + x[..., b] * np.cos(ang)
    return y


@given(st.integers(1, 3), st.integers(1, 5), st.sampled_from([(1, 2), (2, 4), (3, 6), (2, 8)]),
       st.integers(0, 50), st.integers(0, 2**31))
def test_forward_is_the_equation_and_the_gradient_checks(B, T, heads, start, seed):
    H, hs = heads
    x = np.random.default_rng(seed).standard_normal((B, T, H * hs))
    pos = np.arange(start, start + T)
    y = ops.rotary(Tensor(x), pos, H)
    np.testing.assert_allclose(to_numpy(y.data), rope_reference(x, pos, H), rtol=1e-12, atol=1e-12)
    grad_check(lambda t: ops.rotary(t, pos, H), [x], "rotary")


def test_a_rotation_keeps_norms_and_scores_depend_only_on_the_offset():
    """q R(m)^T R(n) k = q R(n - m) k: shifting both positions by the same amount leaves every score alone."""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 8))

    def score(m, n):
        qm, kn = (to_numpy(ops.rotary(Tensor(a), np.array([p]), 1).data) for a, p in ((q, m), (k, n)))
        return float((qm * kn).sum())

    assert score(3, 7) == pytest.approx(score(103, 107), rel=1e-9) == pytest.approx(score(0, 4), rel=1e-9)
    assert abs(score(3, 7) - score(3, 8)) > 1e-3
    turned = to_numpy(ops.rotary(Tensor(q), np.array([5]), 1).data)
    assert np.linalg.norm(turned) == pytest.approx(np.linalg.norm(q), rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (2, 3, 6), "n_head": 2}, "heads of even size"),
    ({"shape": (2, 3), "n_head": 1}, r"\(B, T, C\)"),
    ({"shape": (1, 3, 4), "n_head": 1, "pos": [0, 1]}, "one position per time step"),
])
def test_bad_shapes_raise(kwargs, match):
    T = kwargs["shape"][1]
    with pytest.raises(ValueError, match=match):
        ops.rotary(Tensor(np.ones(kwargs["shape"])), kwargs.get("pos", list(range(T))), kwargs["n_head"])


def rope_gpt(seed: int = 0, dtype=np.float64) -> GPT:
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        model = GPT(GPTConfig.from_preset("test", position_embedding="rope")).to(dtype)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():  # O(1) weights: every path carries signal (see test_gpt's randomized64)
        p.data = p.numpy() + rng.normal(0, 0.3, p.shape).astype(dtype)
    return model


def test_config_has_no_position_table_and_checks_its_fields():
    model = rope_gpt()
    assert model.wpe is None and "wpe.weight" not in dict(model.named_parameters())
    with pytest.raises(ValueError, match="position_embedding"):
        GPTConfig(position_embedding="alibi")
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(d_model=6, n_head=2, position_embedding="rope")


def test_whole_rope_gpt_gradients_match_central_differences():
    """8 random elements of every parameter of a float64 rope GPT against central differences; the step and
    the tolerances are test_gpt.py's (eps 1e-5: the difference is good to ~1e-9 absolute; rtol 1e-6)."""
    model = rope_gpt(seed=3)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, 64, (2, 6)), rng.integers(0, 64, (2, 6))
    model(ids, targets)[1].backward()
    eps, rtol, atol = 1e-5, 1e-6, 1e-9
    for name, p in model.named_parameters():
        grad, flat = to_numpy(p.grad).reshape(-1), p.data.reshape(-1)   # flat is a view into the model
        for i in rng.choice(flat.size, 8, replace=False):
            old, diffs = flat[i], []
            for step in (eps, -eps):
                flat[i] = old + step
                with no_grad():
                    diffs.append(model(ids, targets)[1].item())
            flat[i] = old
            num = (diffs[0] - diffs[1]) / (2 * eps)
            assert abs(grad[i] - num) <= atol + rtol * abs(num), f"{name}[{i}]: {grad[i]!r} vs {num!r}"


def test_kv_cached_forward_equals_one_call_and_generation_matches():
    model = rope_gpt()
    ids = np.random.default_rng(2).integers(0, 64, (1, 10))
    with no_grad():
        full, _ = model(ids)
        cache = model.new_kv_cache()
        parts = [model(ids[:, a:b], kv_cache=cache)[0] for a, b in ((0, 4), (4, 5), (5, 10))]
    got = np.concatenate([to_numpy(p.data) for p in parts], axis=1)
    np.testing.assert_allclose(got, to_numpy(full.data), rtol=1e-10, atol=1e-10)
    prompt = [int(t) for t in ids[0, :4]]
    assert generate(model, prompt, 8) == generate(model, prompt, 8, use_cache=False)


def test_a_sequences_outputs_do_not_depend_on_where_it_starts():
    """Scores depend only on offsets, q R(m)^T R(n) k = q R(n - m) k, and there is no position table: the same
    tokens at positions 0..4 and at 9..13 give the same logits (a learned table would add different vectors).

    One token alone cannot show this: attending to a single key, softmax gives it weight 1 whatever its score, so
    turning only k (or q) would pass. Five tokens make every score count."""
    model = rope_gpt()
    ids = np.random.default_rng(4).integers(0, 64, (2, 5))
    with no_grad():
        out0, _ = model(ids)
        cache = model.new_kv_cache()
        cache.length = 9  # as if nine positions came before, their keys dropped: the tokens sit at positions 9..13
        out9, _ = model(ids, kv_cache=cache)
    out0, out9 = to_numpy(out0.data), to_numpy(out9.data)
    # float64: the angles 9 theta_i .. 13 theta_i round differently from 0 .. 4 theta_i (~1e-16 relative in each
    # cos and sin), carried through two blocks: ~1e-14 of the largest logit at most (measured 4e-16). 1e-10 leaves
    # margin; a rotation that breaks the relative property moves the scores, and the logits, by O(1) here.
    np.testing.assert_allclose(out9, out0, rtol=0, atol=1e-10 * np.abs(out0).max())
