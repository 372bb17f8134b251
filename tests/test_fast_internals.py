"""The fast paths' own mechanics: attention's causal blocks and score bound, GELU's chunks, the shift-free
cross-entropy, scatter_add's `+=`. Each test calls the fast class itself, so it runs whatever the fast-ops
switch says; test_fast_ops.py checks every fast path equal to its reference over random inputs."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, attention_shapes

from minipeft import Tensor, backend, to_numpy
from minipeft.ops.multihead_attention import AttentionFn
from minipeft.workshop.fast import _shared
from minipeft.workshop.fast._shared import SHIFT_FREE_BOUND
from minipeft.workshop.fast.attention import BlockedAttentionFn, _heads, score_bound
from minipeft.workshop.fast.cross_entropy import ShiftFreeCrossEntropyFn
from minipeft.workshop.fast.gelu import ChunkedGELUFn
from minipeft.workshop.fast.scatter_add import scatter_add_unique_rows


def blocked(q, k, v, n_head, block_size, causal=True):
    return BlockedAttentionFn.apply(q, k, v, n_head=n_head, causal=causal, block_size=block_size)


def reference64(q, k, v, n_head):
    """The reference op in float64 (tied to a loop and to central differences in test_ops_nn.py)."""
    return AttentionFn.apply(*(Tensor(np.asarray(a, dtype=np.float64)) for a in (q, k, v)), n_head=n_head).numpy()


# ---- attention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["causal", "kv_cache", "non_causal"])
@given(shape=attention_shapes(max_T=6), data=st.data())
def test_every_block_size_gives_the_reference(mode, shape, data):
    """Block size 1 (a block per query row) up to >= T (one block) only splits the work: the reference's output
    (float64 rounding) and central differences' gradients."""
    B, T, H, hs = shape
    C = H * hs
    Tq = data.draw(st.integers(1, T)) if mode == "kv_cache" else T
    Tk = data.draw(st.integers(1, 4)) if mode == "non_causal" else T
    bs = data.draw(st.integers(1, T + 1), label="block_size")
    q, k, v = data.draw(arrays((B, Tq, C))), data.draw(arrays((B, Tk, C))), data.draw(arrays((B, Tk, C)))
    causal = mode != "non_causal"
    out = blocked(Tensor(q), Tensor(k), Tensor(v), H, bs, causal)
    ref = AttentionFn.apply(Tensor(q), Tensor(k), Tensor(v), n_head=H, causal=causal)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12, atol=1e-13)
    grad_check(lambda a, b, c: blocked(a, b, c, H, bs, causal), [q, k, v],
               f"blocked attention({mode}, B={B}, Tq={Tq}, Tk={Tk}, H={H}, hs={hs}, block_size={bs})")


def test_causal_blocks_skip_the_masked_future():
    """T = 8 in blocks of 2: the score products cover keys 0..2, 0..4, 0..6, 0..8, i.e. 20 of 64 entries per
    head instead of all 64, and the result equals the one-block computation to float64 rounding."""
    from minipeft import ops

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 8, 4)) for _ in range(3))
    with ops.record_matmuls() as log:
        out = blocked(Tensor(q), Tensor(k), Tensor(v), 2, 2)
    # per block: S = Qs K^T with Qs (1, H, 2, hs) and K^T (1, H, hs, e), then P V with P (1, H, 2, e)
    assert log[0::2] == [((1, 2, 2, 2), (1, 2, 2, e)) for e in (2, 4, 6, 8)], log
    assert log[1::2] == [((1, 2, 2, e), (1, 2, e, 2)) for e in (2, 4, 6, 8)], log
    one = blocked(Tensor(q), Tensor(k), Tensor(v), 2, 8)
    np.testing.assert_allclose(out.numpy(), one.numpy(), rtol=1e-12, atol=1e-14)


def test_block_size_must_be_a_positive_int():
    q = Tensor(np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        blocked(q, q, q, 1, 0)


def test_blocked_float32_matches_float64_reference():
    """At the tutorials' shape (T = 256 in blocks of 32) float32 stays within a few ulps of float64: each output
    is a convex combination of v rows, so the error is O(eps32 * (log T + hs)) relative."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 256, 8)) for _ in range(3))
    out = blocked(*(Tensor(a.astype(np.float32)) for a in (q, k, v)), 2, 32).numpy()
    np.testing.assert_allclose(out, reference64(q, k, v, 2), rtol=0, atol=1e-5)


@given(shape=attention_shapes(max_T=6), data=st.data())
def test_score_bound_bounds_every_score(shape, data):
    """score_bound(q, k) >= |q_i . k_j| for every head, query and key (Cauchy-Schwarz), so a call whose bound is
    within SHIFT_FREE_BOUND may skip softmax's max shift."""
    B, T, H, hs = shape
    q, k = data.draw(arrays((B, T, H * hs))) * 30, data.draw(arrays((B, T, H * hs)))
    qs, kh = _heads(backend.asarray(q), H), _heads(backend.asarray(k), H)
    # squares of |q| ~ 1e-160 underflow to 0, so the bound may read 0 where scores are ~1e-160: harmless for the
    # op (such scores cannot overflow exp), hence the absolute slack
    assert np.abs(to_numpy(qs) @ to_numpy(kh).swapaxes(-1, -2)).max() <= score_bound(qs, kh) * (1 + 1e-12) + 1e-150


def test_scores_beyond_the_bound_shift_by_the_row_max():
    """Scores of ~200 overflow exp in float32 (e^89 > 3.4e38) unless shifted; past SHIFT_FREE_BOUND the op shifts
    by the row max, so float32 stays finite and matches float64, and float64 passes the grad check."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 40, 8)) for _ in range(3))
    q *= 60
    assert np.abs(q[0, :, :4] @ k[0, :, :4].T).max() / 2 > 5 * SHIFT_FREE_BOUND   # hs = 4: scores >> the bound
    out = blocked(*(Tensor(a.astype(np.float32)) for a in (q, k, v)), 2, 16).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference64(q, k, v, 2), rtol=0, atol=2e-4)  # ~eps32 * |score| * |v|
    grad_check(lambda a, b, c: blocked(a, b, c, 2, 16), [q[:, :6] / 10, k[:, :6], v[:, :6]],
               "blocked attention with scores beyond SHIFT_FREE_BOUND")


def test_no_shift_near_the_bound_float32():
    """Scores near -SHIFT_FREE_BOUND (every exp ~ e^-38) take the unshifted path: exp(s) / sum exp(s) is still
    the softmax to float32 rounding, forward and backward (compared with float64)."""
    rng = np.random.default_rng(4)
    B, T, H, hs = 2, 48, 2, 8
    u = rng.standard_normal((B, T, H, hs))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    q = (-u * np.sqrt(0.95 * SHIFT_FREE_BOUND * np.sqrt(hs))).reshape(B, T, H * hs)
    k = (u * np.sqrt(0.95 * SHIFT_FREE_BOUND * np.sqrt(hs))).reshape(B, T, H * hs)  # score(i, i) = -0.95 bound
    v, dout = rng.standard_normal((B, T, H * hs)), rng.standard_normal((B, T, H * hs))
    qs, kh = _heads(backend.asarray(q), H, 1 / np.sqrt(hs)), _heads(backend.asarray(k), H)
    assert score_bound(qs, kh) <= SHIFT_FREE_BOUND

    def run(dtype):
        ts = [Tensor(a.astype(dtype), requires_grad=True) for a in (q, k, v)]
        out = blocked(*ts, H, 32)
        out.backward(dout.astype(dtype))
        return [out.numpy()] + [to_numpy(t.grad) for t in ts]

    for got, ref in zip(run(np.float32), run(np.float64), strict=True):
        # float32 rounding of scores of size ~38 is ~38 * eps32 = 5e-6 relative in each exp, scaled by |v| and
        # by the |q|, |k| ~ 6.5 factors of the chain rule
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


# ---- cross-entropy -------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0.0, 39.0, -39.0, 41.0, -300.0, 300.0])
def test_cross_entropy_float32_both_sides_of_the_shift_free_bound(offset):
    """Cross-entropy is invariant to adding a constant to a row. Within +-SHIFT_FREE_BOUND (40) the fast path
    exponentiates the logits unshifted, beyond it subtracts the row max (exp(300) overflows float32); either way
    float32 gives the float64 loss and softmax-minus-onehot gradient of the unshifted logits. Tolerance: the
    float32 rounding of a logit of size |offset| + 3, i.e. eps32 * 300 ~ 4e-5, enters every exp."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((64, 300)) * 1.5
    t = rng.integers(0, 300, 64)
    zt = Tensor((z + offset).astype(np.float32), requires_grad=True)
    loss = ShiftFreeCrossEntropyFn.apply(zt, Tensor(t))
    loss.backward()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = -np.log(p[np.arange(64), t]).mean()
    tol = 2 * np.finfo(np.float32).eps * (abs(offset) + 8)
    # the loss (~6) is a difference of terms of size |offset| + 3, each off by <= tol / 2: rtol tol
    np.testing.assert_allclose(loss.item(), want, rtol=tol)
    np.testing.assert_allclose(to_numpy(zt.grad), (p - np.eye(300)[t]) / 64, rtol=0, atol=tol / 64)


# ---- scatter_add ---------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [[0, 2, 3], [3, 0, 3], [-1, 0], []])
def test_scatter_add_matches_np_add_at_on_a_nonzero_target(index):
    """The `+=` (an index that repeats no row) and np.add.at agree, also when the target is not zero."""
    rng = np.random.default_rng(0)
    target, values = rng.standard_normal((4, 3)), rng.standard_normal((len(index), 3))
    idx = np.array(index, dtype=np.int64)
    want = target.copy()
    np.add.at(want, idx, values)
    got = backend.asarray(target)
    scatter_add_unique_rows(got, backend.asarray(idx), backend.asarray(values))
    np.testing.assert_array_equal(to_numpy(got), want)


# ---- GELU's chunks -------------------------------------------------------------------------------
@contextlib.contextmanager
def chunk_size(size: int):
    """_shared.CHUNK_ELEMENTS = size inside the block, restored afterwards."""
    saved, _shared.CHUNK_ELEMENTS = _shared.CHUNK_ELEMENTS, size
    try:
        yield
    finally:
        _shared.CHUNK_ELEMENTS = saved


@pytest.mark.skipif(backend.is_gpu(), reason="on the GPU chunks() gives one slice: a chunk would cost launches")
@given(n=st.integers(0, 300), size=st.integers(1, 64))
def test_chunks_cover_every_index_once_in_order(n, size):
    with chunk_size(size):
        spans = _shared.chunks(n)
    covered = [i for s in spans for i in range(n)[s]]
    assert covered == list(range(n))
    assert all(len(range(n)[s]) <= size for s in spans)
    assert len(spans) == -(-n // size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (0, 5), (7,), (3, 5, 9), (33, 64)])
@pytest.mark.parametrize("transposed", [False, True])
def test_gelu_chunked_is_bit_identical_to_whole_array(dtype, shape, transposed):
    # Every element goes through the same float operations whatever the chunking, so chunks of 7 (a ragged last
    # chunk for every shape here) must give exactly the bits of one whole-array chunk, forward and backward.
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x = x.T if transposed else x                          # a non-contiguous input goes through a flat copy
    dy = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for size in (10**9, 7):
        with chunk_size(size):
            t = Tensor(x, requires_grad=True)
            y = ChunkedGELUFn.apply(t)
            y.backward(dy)
        results.append((to_numpy(y.data), to_numpy(t.grad)))
    (y_whole, g_whole), (y_chunked, g_chunked) = results
    assert y_chunked.dtype == dtype and y_chunked.shape == x.shape and g_chunked.shape == x.shape
    np.testing.assert_array_equal(y_chunked, y_whole)
    np.testing.assert_array_equal(g_chunked, g_whole)
    # and both are GELU: against the written-out formula in float64. In float32, 1 + tanh u cancels for x << 0,
    # leaving an absolute error up to |x| ulp(1) / 2 ~ 7e-7 at |x| <= 12 (inputs are 3 sigma here): hence atol.
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(y_chunked, want, **tol)
