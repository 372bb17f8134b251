"""Spec of the LoRA op `lora_linear`: y = x W0^T + b + s * (dropout(x) A^T) B^T, with an explicit backward.

Proves the forward equation, every gradient against float64 central differences (with and without
dropout), and that a frozen W0 costs no (d x k) weight-gradient matmul: the compute PEFT saves.
"""

from __future__ import annotations

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import seeded

import minipeft
from minipeft import Tensor, to_numpy
from minipeft.ops import record_matmuls
from minipeft.peft import lora_linear


@st.composite
def lora_problem(draw, max_side: int = 4):
    """(x, W0, b, A, B, scale) in float64: x (*batch, k), W0 (d, k), b (d,) or None, A (r, k), B (d, r)."""
    k, d, r = (draw(st.integers(1, max_side)) for _ in range(3))
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((*batch, k))
    W0, A, B = rng.standard_normal((d, k)), rng.standard_normal((r, k)), rng.standard_normal((d, r))
    b = rng.standard_normal(d) if draw(st.booleans()) else None
    scale = draw(st.floats(0.1, 8.0))
    return x, W0, b, A, B, scale


def reference(x, W0, b, A, B, s, keep=None):
    """The equation in plain NumPy; `keep` is the (already scaled) dropout mask on the adapter's input."""
    xd = x if keep is None else x * keep
    y = x @ W0.T + s * (xd @ A.T) @ B.T
    return y if b is None else y + b


FAST = pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])


@FAST
@given(lora_problem())
def test_forward_matches_the_equation(fast, problem):
    x, W0, b, A, B, s = problem
    with minipeft.fast_ops(fast):
        y = lora_linear(Tensor(x), Tensor(W0), None if b is None else Tensor(b), Tensor(A), Tensor(B), s)
    assert y.shape == (*x.shape[:-1], W0.shape[0])
    np.testing.assert_allclose(to_numpy(y.data), reference(x, W0, b, A, B, s), rtol=1e-12, atol=1e-12)


@FAST
@given(lora_problem())
def test_grad_check_every_input(fast, problem):
    """Central differences for x, W0, b, A and B at once (W0 and b trainable here, as with bias='all')."""
    x, W0, b, A, B, s = problem
    with minipeft.fast_ops(fast):
        if b is None:
            grad_check(lambda x_, W_, A_, B_: lora_linear(x_, W_, None, A_, B_, s), [x, W0, A, B], "lora_linear")
        else:
            grad_check(lambda *t: lora_linear(*t, s), [x, W0, b, A, B], "lora_linear")


@FAST
@given(lora_problem(), st.sampled_from([0.25, 0.5]))
def test_grad_check_with_dropout(fast, problem, p):
    """Dropout draws its mask from the global generator at every forward. grad_check calls `fn` once for
    autograd and twice per input element for the differences, so `fn` re-seeds before each call: every
    pass sees the same mask and the op is a fixed (differentiable) function of its inputs. The mask
    depends only on x's shape, never on its values, so perturbing x does not change it either."""
    x, W0, b, A, B, s = problem

    def fn(*t):
        minipeft.manual_seed(11)
        return lora_linear(*t, s, dropout_p=p)

    with seeded(0), minipeft.fast_ops(fast):
        grad_check(fn, [x, W0, b if b is not None else np.zeros(W0.shape[0]), A, B], "lora_linear(dropout)")


def test_dropout_acts_on_the_adapter_input_only():
    """Same seed -> same output; with B = 0 dropout changes nothing (the frozen path is never dropped);
    with B != 0 the output differs from the no-dropout output, so the masked grad check above was real."""
    rng = np.random.default_rng(0)
    x, W0, b, A, B = (rng.standard_normal(s) for s in [(6, 5), (4, 5), (4,), (3, 5), (4, 3)])
    T = [Tensor(a) for a in (x, W0, b, A, B)]
    with seeded(3):
        y1 = to_numpy(lora_linear(*T, 2.0, dropout_p=0.5).data)
    with seeded(3):
        y2 = to_numpy(lora_linear(*T, 2.0, dropout_p=0.5).data)
    np.testing.assert_array_equal(y1, y2)
    assert np.abs(y1 - reference(x, W0, b, A, B, 2.0)).max() > 1e-3
    Z = Tensor(np.zeros_like(B))
    with seeded(3):
        y0 = to_numpy(lora_linear(T[0], T[1], T[2], T[3], Z, 2.0, dropout_p=0.5).data)
    np.testing.assert_array_equal(y0, x @ W0.T + b)
    # inverted dropout: the kept inputs are scaled by 1/(1-p), so the mask's entries are 0 or 2 here
    with seeded(3):
        keep = (to_numpy(minipeft.backend.rng().random((6, 5), dtype=np.float64)) >= 0.5) * 2.0
    np.testing.assert_allclose(y1, reference(x, W0, b, A, B, 2.0, keep), rtol=1e-12, atol=1e-12)


def _backward_products(W0_trainable: bool, d=7, k=5, r=3, N=6, fast=True):
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, N // 2, k)), requires_grad=True)
    W0 = Tensor(rng.standard_normal((d, k)), requires_grad=W0_trainable)
    b = Tensor(rng.standard_normal(d), requires_grad=False)
    A = Tensor(rng.standard_normal((r, k)), requires_grad=True)
    B = Tensor(rng.standard_normal((d, r)), requires_grad=True)
    with minipeft.fast_ops(fast):
        y = lora_linear(x, W0, b, A, B, 2.0)
        with record_matmuls() as log:
            y.backward(np.ones(y.shape))
    return log, (x, W0, b, A, B)


def test_frozen_base_weight_gets_no_dW0_matmul():
    """d, k, r, N all differ, so the shape pair ((d, N), (N, k)) is dW0 = dy^T x and nothing else."""
    d, k, N = 7, 5, 6
    log, (x, W0, b, A, B) = _backward_products(W0_trainable=False)
    assert log, "record_matmuls saw no product at all: it is not wired into lora_linear's backward"
    assert ((d, N), (N, k)) not in log, f"a frozen W0 still got its (d x k) gradient product: {log}"
    assert W0.grad is None and b.grad is None
    assert x.grad is not None and A.grad is not None and B.grad is not None
    # exactly dB = dy^T h, dh = dy B, dA = dh^T x, and dx = dy (W0 + s B A) folded into one product
    r = A.shape[0]
    assert log == [((d, N), (N, r)), ((N, d), (d, r)), ((r, N), (N, k)), ((N, d), (d, k))], log


def test_reference_backward_forms_the_equations_products_and_no_dW0():
    """The reference path, term by term: dB = s dy^T h, dh = s dy B, dA = dh^T x, dx = dh A + dy W0; no dW0."""
    d, k, r, N = 7, 5, 3, 6
    log, (x, W0, b, A, B) = _backward_products(W0_trainable=False, fast=False)
    assert log == [((d, N), (N, r)), ((N, d), (d, r)), ((r, N), (N, k)), ((N, r), (r, k)), ((N, d), (d, k))], log
    assert W0.grad is None and b.grad is None


def test_dropout_path_keeps_the_two_products_for_dx():
    """With dropout the adapter sees dropout(x) but W0 sees x, so dx = dy W0 + (dh A) * keep cannot fold."""
    d, k, r, N = 7, 5, 3, 6
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((N, k)), requires_grad=True)
    W0 = Tensor(rng.standard_normal((d, k)))
    A = Tensor(rng.standard_normal((r, k)), requires_grad=True)
    B = Tensor(rng.standard_normal((d, r)), requires_grad=True)
    with seeded(0):
        y = lora_linear(x, W0, None, A, B, 2.0, dropout_p=0.5)
    with record_matmuls() as log:
        y.backward(np.ones(y.shape))
    assert ((N, r), (r, k)) in log and ((N, d), (d, k)) in log and ((d, N), (N, k)) not in log, log
    assert len(log) == 5, log


def test_folded_float32_forward_is_within_the_rounding_bound():
    """Without dropout the forward is x (W0 + s B A)^T: W_eff is rounded to float32 once, then the product sums
    k terms. Against the unfolded float64 equation, each output may err by at most gamma = (k + r + 3) eps32
    times sum_j |x_j| (|W0| + s |B| |A|)_ij + |b_i| (the standard dot-product bound, Higham sec. 3.1)."""
    rng = np.random.default_rng(4)
    N, k, d, r, s = 64, 48, 32, 8, 2.0
    x, W0, b = rng.standard_normal((N, k)), rng.standard_normal((d, k)), rng.standard_normal(d)
    A, B = rng.standard_normal((r, k)), rng.standard_normal((d, r))
    with minipeft.fast_ops(True):
        y = lora_linear(*(Tensor(a.astype(np.float32)) for a in (x, W0, b, A, B)), s)
    assert y.dtype == np.float32
    f32 = [a.astype(np.float32).astype(np.float64) for a in (x, W0, b, A, B)]
    exact = reference(*f32, s)
    bound = (k + r + 3) * np.finfo(np.float32).eps * (np.abs(f32[0]) @ (np.abs(f32[1]) + s * np.abs(f32[4])
                                                                        @ np.abs(f32[3])).T + np.abs(f32[2]))
    err = np.abs(to_numpy(y.data).astype(np.float64) - exact)
    assert (err <= bound).all(), f"worst error / bound = {(err / bound).max():.3g}"
    assert np.abs(exact - reference(*f32[:3], f32[3], 0 * f32[4], s)).min() > 0  # the adapter does change y


def test_trainable_base_weight_does_get_its_matmul():
    """The control: the recorder does see dW0 when W0 requires grad, so the test above can fail."""
    d, k, N = 7, 5, 6
    log, (_, W0, *_) = _backward_products(W0_trainable=True)
    assert ((d, N), (N, k)) in log
    assert W0.grad is not None and W0.grad.shape == (d, k)


def test_no_adapter_grads_no_adapter_matmuls():
    """Only x requires grad (a frozen layer below a trainable one): dA, dB and dW0 are all skipped."""
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((4, 5)), requires_grad=True)
    W0, A, B = (Tensor(rng.standard_normal(s)) for s in [(7, 5), (3, 5), (7, 3)])
    with minipeft.fast_ops(True):
        y = lora_linear(x, W0, None, A, B, 1.0)  # the fast path: folded
        with record_matmuls() as log:
            y.backward(np.ones(y.shape))
    assert log == [((4, 7), (7, 5))], log  # dx = dy (W0 + s B A): the low-rank path is folded in
    with minipeft.fast_ops(False):
        y = lora_linear(x, W0, None, A, B, 1.0)
        with record_matmuls() as log:
            y.backward(np.ones(y.shape))
    assert log == [((4, 7), (7, 3)), ((4, 3), (3, 5)), ((4, 7), (7, 5))], log  # dh, dh A, dy W0: no dA, dB, dW0


@pytest.mark.parametrize("shapes", [
    [(2, 6), (4, 5), (4,), (3, 5), (4, 3)],    # x has the wrong last dim
    [(2, 5), (4, 5), (4,), (3, 6), (4, 3)],    # A (r, k') with k' != k
    [(2, 5), (4, 5), (4,), (3, 5), (4, 2)],    # B (d, r') with r' != r
    [(2, 5), (4, 5), (3,), (3, 5), (4, 3)],    # b (d',)
])
def test_shape_mismatch_names_every_shape(shapes):
    T = [Tensor(np.ones(s)) for s in shapes]
    with pytest.raises(ValueError, match=r"lora_linear: x .* W0 .* A .* B .* do not fit"):
        lora_linear(*T, 1.0)


def test_dtype_mismatch_raises():
    x, W0, A, B = (np.ones(s) for s in [(2, 5), (4, 5), (3, 5), (4, 3)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        lora_linear(Tensor(x), Tensor(W0), None, Tensor(A.astype(np.float32)), Tensor(B), 1.0)


def test_inference_forward_is_one_full_size_product():
    """The fast path: under no_grad (or with A and B frozen) the folded forward forms s B A (d x r x k) and
    x W_eff^T only. h = x A^T exists for dB, so it is skipped when nothing needs dB; with a trainable B it is formed."""
    d, k, r, N = 7, 5, 3, 6
    rng = np.random.default_rng(5)
    x, W0, A, B = (rng.standard_normal(s) for s in [(N, k), (d, k), (r, k), (d, r)])
    with minipeft.no_grad(), minipeft.fast_ops(True), record_matmuls() as log:
        y = lora_linear(Tensor(x), Tensor(W0), None, Tensor(A), Tensor(B), 2.0)
    assert log == [((d, r), (r, k)), ((N, k), (k, d))], log
    np.testing.assert_allclose(to_numpy(y.data), reference(x, W0, None, A, B, 2.0), rtol=1e-12, atol=1e-12)
    with minipeft.fast_ops(True), record_matmuls() as log:
        lora_linear(Tensor(x), Tensor(W0), None, Tensor(A), Tensor(B, requires_grad=True), 2.0)
    assert ((N, k), (k, r)) in log and len(log) == 3, log


def test_few_rows_run_the_two_paths_instead_of_folding():
    """Decoding passes one row per layer: folding would cost d r k multiply-adds against N r (d + k) for the low-rank
    path, so below N (d + k) < d k the fast path does not fold, forward or backward, and still equals the reference."""
    d, k, r = 16, 12, 2                                     # d k / (d + k) = 6.9: N <= 6 runs two paths, 7 folds
    rng = np.random.default_rng(6)
    W0, A, B = (rng.standard_normal(s) for s in [(d, k), (r, k), (d, r)])
    fold_product = ((d, r), (r, k))
    for N, folds in [(1, False), (6, False), (7, True)]:
        x = rng.standard_normal((N, k))
        with minipeft.no_grad(), minipeft.fast_ops(True), record_matmuls() as log:
            y = lora_linear(Tensor(x), Tensor(W0), None, Tensor(A), Tensor(B), 2.0)
        assert (fold_product in log) == folds, (N, log)
        np.testing.assert_allclose(to_numpy(y.data), reference(x, W0, None, A, B, 2.0), rtol=1e-12, atol=1e-12)
        grads = {}
        for fast in (True, False):                          # training: x, A and B require grad
            ts = [Tensor(a, requires_grad=True) for a in (x, A, B)]
            with minipeft.fast_ops(fast), record_matmuls() as log:
                out = lora_linear(ts[0], Tensor(W0), None, ts[1], ts[2], 2.0)
                out.backward(np.ones(out.shape))
            grads[fast] = [to_numpy(t.grad) for t in ts]
            if fast:
                assert (fold_product in log) == folds, (N, log)
        for g_fast, g_ref in zip(grads[True], grads[False], strict=True):
            np.testing.assert_allclose(g_fast, g_ref, rtol=1e-12, atol=1e-12)
