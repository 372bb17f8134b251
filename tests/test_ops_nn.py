"""Neural-network ops (embedding, layer norm, softmax, attention, cross-entropy, dropout) against formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from strategies import array_and_shape, arrays, attention_shapes, shapes, token_ids

from minipeft import Tensor, manual_seed, ops, to_numpy


# ---- embedding ---------------------------------------------------------------------------------
@given(data=st.data())
def test_embedding(data):
    V, C = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    ids = data.draw(token_ids(V, data.draw(shapes(max_dims=2, max_side=4))))
    W = data.draw(arrays((V, C)))
    np.testing.assert_array_equal(ops.embedding(ids, Tensor(W)).numpy(), W[ids])
    grad_check(lambda w: ops.embedding(ids, w), [W], f"embedding(ids={ids.tolist()})")


def test_embedding_repeated_ids_accumulate():
    W = Tensor(np.zeros((4, 2)), requires_grad=True)
    ids = np.array([[1, 3, 1], [1, 0, 3]])
    dout = np.arange(12.0).reshape(2, 3, 2)
    ops.embedding(ids, W).backward(dout)
    want = np.zeros((4, 2))
    want[1] = dout[0, 0] + dout[0, 2] + dout[1, 0]
    want[3] = dout[0, 1] + dout[1, 2]
    want[0] = dout[1, 1]
    np.testing.assert_array_equal(to_numpy(W.grad), want)


# ---- layer norm --------------------------------------------------------------------------------
def layer_norm_ref(x, w=None, b=None, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


@pytest.mark.parametrize("affine", [True, False])
@given(x=array_and_shape(max_dims=3, max_size=24), data=st.data())
def test_layer_norm(affine, x, data):
    C = x.shape[-1]
    if affine:
        w, b = data.draw(arrays((C,))), data.draw(arrays((C,)))
        np.testing.assert_allclose(ops.layer_norm(Tensor(x), Tensor(w), Tensor(b)).numpy(),
                                   layer_norm_ref(x, w, b), rtol=1e-10, atol=1e-12)
        grad_check(ops.layer_norm, [x, w, b], "layer_norm")
    else:
        np.testing.assert_allclose(ops.layer_norm(Tensor(x)).numpy(), layer_norm_ref(x),
                                   rtol=1e-10, atol=1e-12)
        grad_check(ops.layer_norm, [x], "layer_norm (no affine)")


def test_layer_norm_output_is_normalized():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(4, 16))
    y = ops.layer_norm(Tensor(x)).numpy()
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-5)  # var / (var + eps) with var ~ 25


def test_layer_norm_bad_weight_shape_raises():
    with pytest.raises(ValueError, match=r"layer_norm: x \(2, 3\) needs weight and bias of shape \(3,\)"):
        ops.layer_norm(Tensor(np.zeros((2, 3))), Tensor(np.ones(4)))


# ---- softmax -----------------------------------------------------------------------------------
@given(x=array_and_shape(max_dims=3, max_size=24), data=st.data())
def test_softmax(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(ops.softmax(Tensor(x), axis=axis).numpy(), e / e.sum(axis=axis, keepdims=True),
                               rtol=1e-12, atol=1e-14)
    grad_check(lambda t: ops.softmax(t, axis=axis), [x], f"softmax(axis={axis})")


def test_softmax_is_stable_for_large_logits():
    y = ops.softmax(Tensor(np.array([1000.0, 1000.0, -1000.0], dtype=np.float32))).numpy()
    np.testing.assert_allclose(y, [0.5, 0.5, 0.0])


# ---- attention ---------------------------------------------------------------------------------
def attention_ref(q, k, v, H, causal=True):
    """A straightforward loop over batch and heads; the queries are the last Tq positions."""
    B, Tq, C = q.shape
    Tk, hs = k.shape[1], C // H
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            c = slice(h * hs, (h + 1) * hs)
            s = q[b, :, c] @ k[b, :, c].T / math.sqrt(hs)
            if causal:
                for i in range(Tq):
                    s[i, Tk - Tq + i + 1:] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, c] = (p / p.sum(-1, keepdims=True)) @ v[b, :, c]
    return out


@pytest.mark.parametrize("mode", ["causal", "kv_cache", "non_causal"])
@given(shape=attention_shapes(max_T=6), data=st.data())
def test_attention(mode, shape, data):
    """Training (Tq == Tk), KV-cached decoding (Tq < Tk) and non-causal attention give the loop's output and
    central differences' gradients."""
    B, T, H, hs = shape
    C = H * hs
    Tq = data.draw(st.integers(1, T)) if mode == "kv_cache" else T
    Tk = data.draw(st.integers(1, 4)) if mode == "non_causal" else T
    q, k, v = data.draw(arrays((B, Tq, C))), data.draw(arrays((B, Tk, C))), data.draw(arrays((B, Tk, C)))
    causal = mode != "non_causal"
    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), n_head=H, causal=causal)
    np.testing.assert_allclose(out.numpy(), attention_ref(q, k, v, H, causal), rtol=1e-10, atol=1e-12)
    grad_check(lambda a, b, c: ops.attention(a, b, c, n_head=H, causal=causal), [q, k, v],
               f"attention({mode}, B={B}, Tq={Tq}, Tk={Tk}, H={H}, hs={hs})")


def test_attention_float32_matches_float64_reference():
    """At the tutorials' shape (T = 256) float32 stays within a few ulps of the float64 loop: each output is a
    convex combination of v rows, so the error is O(eps32 * (log T + hs)) relative."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 256, 8)) for _ in range(3))
    out = ops.attention(*(Tensor(a.astype(np.float32)) for a in (q, k, v)), n_head=2).numpy()
    np.testing.assert_allclose(out, attention_ref(q, k, v, 2), rtol=0, atol=1e-5)


def test_attention_first_query_sees_only_itself():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 3, 4)) for _ in range(3))
    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), n_head=2).numpy()
    np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-12)  # softmax over one key is 1


def test_attention_bad_shapes_raise():
    q = Tensor(np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="not divisible by n_head=3"):
        ops.attention(q, q, q, n_head=3)
    with pytest.raises(ValueError, match="causal attention needs Tk >= Tq"):
        ops.attention(q, Tensor(np.zeros((1, 2, 4))), Tensor(np.zeros((1, 2, 4))), n_head=1)


# ---- cross-entropy -----------------------------------------------------------------------------
def cross_entropy_ref(z, t, ignore_index=-100):
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = t != ignore_index
    if not valid.any():
        return 0.0
    return -np.take_along_axis(logp[valid], t[valid][:, None], axis=-1).mean()


@given(data=st.data())
def test_cross_entropy_with_ignore_index(data):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    V = data.draw(st.integers(1, 5))
    z = data.draw(arrays((*lead, V)))
    t = data.draw(token_ids(V, lead))
    t = np.where(data.draw(arrays(lead)) > 1.0, -100, t)  # about a quarter of the positions ignored
    np.testing.assert_allclose(ops.cross_entropy(Tensor(z), t).item(), cross_entropy_ref(z, t),
                               rtol=1e-12, atol=1e-14)
    grad_check(lambda l: ops.cross_entropy(l, t), [z], f"cross_entropy(targets={t.tolist()})")


@pytest.mark.parametrize("offset", [0.0, 39.0, -39.0, 41.0, -300.0, 300.0])
def test_cross_entropy_float32_both_sides_of_the_shift_free_bound(offset):
    """Cross-entropy is invariant to adding a constant to a row. Within +-SHIFT_FREE_BOUND (40) the op exponentiates
    the logits unshifted, beyond it subtracts the row max (exp(300) overflows float32); either way float32 gives
    the float64 loss and softmax-minus-onehot gradient of the unshifted logits. Tolerance: the float32 rounding
    of a logit of size |offset| + 3, i.e. eps32 * 300 ~ 4e-5, enters every exp."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((64, 300)) * 1.5
    t = rng.integers(0, 300, 64)
    zt = Tensor((z + offset).astype(np.float32), requires_grad=True)
    loss = ops.cross_entropy(zt, t)
    loss.backward()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tol = 2 * np.finfo(np.float32).eps * (abs(offset) + 8)
    # the loss (~6) is a difference of terms of size |offset| + 3, each off by <= tol / 2: rtol tol
    np.testing.assert_allclose(loss.item(), cross_entropy_ref(z, t), rtol=tol)
    np.testing.assert_allclose(to_numpy(zt.grad), (p - np.eye(300)[t]) / 64, rtol=0, atol=tol / 64)


def test_cross_entropy_custom_ignore_index_and_all_ignored():
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    t = np.array([0, 2])
    np.testing.assert_allclose(ops.cross_entropy(Tensor(z), t, ignore_index=2).item(),
                               cross_entropy_ref(z, t, ignore_index=2), rtol=1e-12)
    zt = Tensor(z, requires_grad=True)
    loss = ops.cross_entropy(zt, np.array([-100, -100]))
    loss.backward()
    assert loss.item() == 0.0
    np.testing.assert_array_equal(to_numpy(zt.grad), 0.0)


def test_cross_entropy_grad_is_softmax_minus_onehot():
    z = np.array([[1.0, 2.0, 0.5]])
    zt = Tensor(z, requires_grad=True)
    ops.cross_entropy(zt, np.array([1])).backward()
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(to_numpy(zt.grad), p - np.array([[0.0, 1.0, 0.0]]), rtol=1e-12)


# ---- dropout -----------------------------------------------------------------------------------
def test_dropout_backward_uses_the_forward_mask(keep_rng):
    manual_seed(0)
    x = Tensor(np.random.default_rng(1).uniform(0.5, 1.5, size=(64, 32)), requires_grad=True)
    p = 0.25
    y = ops.dropout(x, p)
    dout = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(dout)
    mask = y.numpy() != 0.0  # x has no zeros, so the zeros of y are exactly the dropped entries
    scale = 1.0 / (1.0 - p)
    np.testing.assert_allclose(y.numpy(), x.numpy() * mask * scale, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), dout * mask * scale, rtol=1e-12)
    assert abs((~mask).mean() - p) < 0.05  # 2048 draws: std of the dropped fraction is ~0.01


def test_dropout_same_seed_same_mask(keep_rng):
    x = Tensor(np.ones((8, 8), dtype=np.float32))
    manual_seed(7)
    a = ops.dropout(x, 0.5).numpy()
    manual_seed(7)
    b = ops.dropout(x, 0.5).numpy()
    c = ops.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)  # the generator moved on: a new mask (2^-64 chance of a clash)


def test_dropout_identity_in_eval_and_p_zero():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    for y in (ops.dropout(x, 0.5, training=False), ops.dropout(x, 0.0)):
        np.testing.assert_array_equal(y.numpy(), x.numpy())


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_p_outside_range_raises(p):
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\)"):
        ops.dropout(Tensor(np.ones(3)), p)
