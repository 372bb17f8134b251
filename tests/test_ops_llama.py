"""The Llama block's ops (RMSNorm, SiLU, SwiGLU) and grouped-query attention, against formulas and
float64 central differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays

from minipeft import Tensor, ops


def rms_norm_ref(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


@given(data=st.data())
def test_rms_norm(data):
    shape = data.draw(st.sampled_from([(3,), (2, 4), (2, 3, 5)]))
    x, w = data.draw(arrays(shape)), data.draw(arrays(shape[-1:]))
    out = ops.rms_norm(Tensor(x), Tensor(w), eps=1e-5).numpy()
    np.testing.assert_allclose(out, rms_norm_ref(x, w, 1e-5), rtol=1e-12, atol=1e-12)
    grad_check(lambda a, b: ops.rms_norm(a, b, eps=1e-5), [x, w], f"rms_norm{shape}")


def test_rms_norm_output_has_unit_root_mean_square():
    x = np.random.default_rng(0).standard_normal((4, 16)) * 7 + 3
    out = ops.rms_norm(Tensor(x), eps=0.0).numpy()
    np.testing.assert_allclose(np.sqrt((out * out).mean(-1)), 1.0, rtol=1e-12)
    assert not np.allclose(out.mean(-1), 0)   # unlike layer norm, the mean stays


def test_rms_norm_bad_weight_shape_raises():
    with pytest.raises(ValueError, match=r"needs a weight of shape \(4,\)"):
        ops.rms_norm(Tensor(np.zeros((2, 4))), Tensor(np.zeros(3)))


def test_silu_and_swiglu_match_their_formulas():
    """float64: sigmoid's tanh form is exact to ~1 ulp of 0.5 (1e-16 absolute), so silu = a * sigmoid(a) is
    within |a| * 1e-16 of the formula: atol 1e-14 over |a| <= 30, rtol for the large values."""
    a = np.linspace(-30, 30, 13)
    u = np.cos(a)
    silu = a / (1 + np.exp(-a))
    np.testing.assert_allclose(ops.silu(Tensor(a)).numpy(), silu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ops.swiglu(Tensor(a), Tensor(u)).numpy(), silu * u, rtol=1e-12, atol=1e-14)


def test_silu_does_not_overflow_for_large_inputs():
    a = np.array([-1e4, -800.0, 800.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise"):
        out = ops.silu(Tensor(a)).numpy()
    np.testing.assert_array_equal(out, np.array([0, 0, 800, 1e4], dtype=np.float32))


@given(data=st.data())
def test_silu_and_swiglu_gradients(data):
    shape = data.draw(st.sampled_from([(3,), (2, 4)]))
    a, u = data.draw(arrays(shape)), data.draw(arrays(shape))
    grad_check(ops.silu, [a], f"silu{shape}")
    grad_check(ops.swiglu, [a, u], f"swiglu{shape}")


def gqa_ref(q, k, v, H, Hkv, causal=True):
    """A loop over query heads, each reading key/value head h // G (transformers' repeat_kv order)."""
    B, Tq, C = q.shape
    Tk, hs, G = k.shape[1], C // H, H // Hkv
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            c, ckv = slice(h * hs, (h + 1) * hs), slice((h // G) * hs, (h // G + 1) * hs)
            s = q[b, :, c] @ k[b, :, ckv].T / math.sqrt(hs)
            if causal:
                for i in range(Tq):
                    s[i, Tk - Tq + i + 1:] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, c] = (p / p.sum(-1, keepdims=True)) @ v[b, :, ckv]
    return out


@pytest.mark.parametrize("H,Hkv", [(4, 2), (6, 2), (3, 1), (2, 2)])
@pytest.mark.parametrize("Tq,Tk", [(3, 3), (1, 4), (2, 5)])
def test_grouped_query_attention(H, Hkv, Tq, Tk):
    """Each query head reads its group's key/value head: the loop's output, and float64 gradients (a shared
    K and V get the sum of their group's heads' gradients)."""
    hs, B = 2, 2
    rng = np.random.default_rng(H * 100 + Hkv * 10 + Tq)
    q = rng.standard_normal((B, Tq, H * hs))
    k, v = rng.standard_normal((B, Tk, Hkv * hs)), rng.standard_normal((B, Tk, Hkv * hs))
    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), n_head=H, n_kv_head=Hkv).numpy()
    np.testing.assert_allclose(out, gqa_ref(q, k, v, H, Hkv), rtol=1e-10, atol=1e-12)
    grad_check(lambda a, b, c: ops.attention(a, b, c, n_head=H, n_kv_head=Hkv), [q, k, v],
               f"attention(H={H}, Hkv={Hkv}, Tq={Tq}, Tk={Tk})")


def test_grouped_query_attention_equals_attention_on_repeated_kv():
    """Repeating each key/value head G times (what a copy would do) and running plain multi-head attention
    gives the same output: the groups are read in transformers' order."""
    rng = np.random.default_rng(3)
    H, Hkv, hs, T = 6, 2, 4, 5
    q, k, v = rng.standard_normal((1, T, H * hs)), *(rng.standard_normal((1, T, Hkv * hs)) for _ in range(2))

    def repeat(a):  # (B, T, Hkv hs) -> (B, T, H hs), head h = kv head h // G
        return np.repeat(a.reshape(1, T, Hkv, 1, hs), H // Hkv, axis=3).reshape(1, T, H * hs)

    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), n_head=H, n_kv_head=Hkv).numpy()
    ref = ops.attention(Tensor(q), Tensor(repeat(k)), Tensor(repeat(v)), n_head=H).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


def test_grouped_query_attention_bad_shapes_raise():
    q = Tensor(np.zeros((1, 3, 12)))
    with pytest.raises(ValueError, match="multiple of n_kv_head=4"):
        ops.attention(q, q, q, n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="Ckv = C / n_head \\* n_kv_head = 4"):
        ops.attention(q, q, q, n_head=6, n_kv_head=2)
