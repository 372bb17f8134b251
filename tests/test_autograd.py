"""The tape: what it records, how gradients accumulate, what frozen inputs cost, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import array_and_shape, arrays, attention_shapes

from minipeft import Function, Tensor, no_grad, ops, tensor, to_numpy
from minipeft.autograd import is_grad_enabled


def leaf(a, requires_grad=True):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


# ---- recording ---------------------------------------------------------------------------------
def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = ops.exp(x * 2.0).sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(KeyError), no_grad():
        raise KeyError("boom")
    assert is_grad_enabled()
    assert (leaf([1.0]) * 2.0).requires_grad


def test_frozen_input_gets_no_grad():
    x, w = leaf([1.0, -2.0]), leaf([3.0, 4.0], requires_grad=False)
    (x * w).sum().backward()
    assert w.grad is None
    np.testing.assert_array_equal(to_numpy(x.grad), [3.0, 4.0])


def test_result_of_frozen_inputs_does_not_require_grad():
    a, b = leaf([1.0], requires_grad=False), leaf([2.0], requires_grad=False)
    c = a + b
    assert not c.requires_grad and c.is_leaf


# ---- accumulation ------------------------------------------------------------------------------
@given(x=array_and_shape(max_size=24))
def test_reused_tensor_gets_sum_of_paths(x):
    t = leaf(x)
    (t * t + t).sum().backward()  # d/dx (x^2 + x) = 2x + 1
    np.testing.assert_allclose(to_numpy(t.grad), 2 * x + 1, rtol=1e-12)


@given(x=array_and_shape(max_size=24))
def test_shared_intermediate_gets_sum_of_paths(x):
    t = leaf(x)
    h = ops.exp(t)
    (h * h + h).sum().backward()  # d/dx (e^2x + e^x) = (2h + 1) h
    np.testing.assert_allclose(to_numpy(t.grad), (2 * np.exp(x) + 1) * np.exp(x), rtol=1e-12)


@given(data=st.data())
def test_tied_weight_grad_is_sum_of_uses(data):
    d = data.draw(st.integers(1, 4))
    x1, x2, W = data.draw(arrays((2, d))), data.draw(arrays((3, d))), data.draw(arrays((d, d)))
    # tied: one W used in parallel (two inputs) and in series (linear of linear)
    Wt = leaf(W)
    (ops.linear(Tensor(x1), Wt).sum() + ops.linear(ops.linear(Tensor(x2), Wt), Wt).sum()).backward()
    # untied copies of the same values: the tied grad must be the sum of theirs
    Wa, Wb, Wc = leaf(W), leaf(W), leaf(W)
    (ops.linear(Tensor(x1), Wa).sum() + ops.linear(ops.linear(Tensor(x2), Wb), Wc).sum()).backward()
    want = to_numpy(Wa.grad) + to_numpy(Wb.grad) + to_numpy(Wc.grad)
    np.testing.assert_allclose(to_numpy(Wt.grad), want, rtol=1e-12, atol=1e-12)


def test_backward_twice_with_retain_graph_accumulates():
    x = leaf([1.0, -3.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, -6.0])
    y.backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [4.0, -12.0])


def test_backward_twice_without_retain_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="a second time.*retain_graph=True"):
        y.backward()


def test_zero_grad_starts_fresh():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [5.0, 5.0])


def test_leaf_grads_do_not_share_memory():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    g = np.array([1.0, 1.0])
    (a + b).backward(g)  # add passes dy to both inputs unchanged
    a.grad *= 10.0       # an in-place update (e.g. gradient clipping) of one leaf's grad ...
    np.testing.assert_array_equal(to_numpy(b.grad), [1.0, 1.0])  # ... must not touch the other's
    np.testing.assert_array_equal(g, [1.0, 1.0])                  # ... or the caller's array


def test_deep_chain_does_not_recurse():
    x = leaf([1.0])
    y = x
    for _ in range(3000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [1.0])


def test_float32_graph_gives_float32_grads():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 4)).astype(np.float32), requires_grad=True)
    W = Tensor(rng.standard_normal((4, 4)).astype(np.float32), requires_grad=True)
    g = Tensor(np.ones(4, dtype=np.float32), requires_grad=True)
    h = ops.layer_norm(ops.gelu(ops.linear(x, W)), g)
    h = ops.attention(h, h, h, n_head=2)
    loss = ops.cross_entropy(h * 0.5 + 1.0, np.array([[0, 1, 2], [3, 0, -100]]))
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == W.grad.dtype == g.grad.dtype == np.float32


# ---- tensor basics -----------------------------------------------------------------------------
def test_backward_on_non_scalar_without_grad_raises():
    with pytest.raises(RuntimeError, match=r"scalar output, got shape \(2,\)"):
        (leaf([1.0, 2.0]) * 2.0).backward()


def test_backward_with_wrong_grad_shape_raises():
    with pytest.raises(ValueError, match=r"grad shape \(3,\) != tensor shape \(2,\)"):
        (leaf([1.0, 2.0]) * 2.0).backward(np.ones(3))


def test_backward_on_tensor_not_requiring_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        leaf([1.0], requires_grad=False).sum().backward()


def test_detach_cuts_the_tape():
    x = leaf([2.0, 3.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.numpy(), x.numpy())
    (d * x).sum().backward()  # only the non-detached factor carries gradient: d/dx = d = x
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 3.0])


def test_item():
    assert leaf([[2.5]]).item() == 2.5
    with pytest.raises(ValueError, match=r"one element, got shape \(2,\)"):
        leaf([1.0, 2.0]).item()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating tensors can require grad"):
        Tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(TypeError, match="only floating tensors can require grad"):
        tensor([1, 2]).requires_grad_()


# ---- causality ---------------------------------------------------------------------------------
@given(shape=attention_shapes(max_T=5), data=st.data())
def test_causal_attention_ignores_the_future(shape, data):
    B, T, H, hs = shape
    C = H * hs
    t = data.draw(st.integers(0, T - 1))
    q, k, v = (data.draw(arrays((B, T, C))) for _ in range(3))
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    for a in (q2, k2, v2):
        a[:, t + 1:] = data.draw(arrays((B, T - t - 1, C))) + 5.0  # new tokens after position t
    out = ops.attention(Tensor(q), Tensor(k), Tensor(v), n_head=H).numpy()
    out2 = ops.attention(Tensor(q2), Tensor(k2), Tensor(v2), n_head=H).numpy()
    np.testing.assert_allclose(out2[:, : t + 1], out[:, : t + 1], rtol=1e-12, atol=1e-12)


# ---- frozen inputs cost no matmul --------------------------------------------------------------
@pytest.mark.parametrize("trainable", [("x",), ("W",), ("x", "W")])
def test_linear_backward_forms_only_the_needed_matmuls(trainable):
    N, d_in, d_out = 6, 4, 3
    x = Tensor(np.ones((2, 3, d_in)), requires_grad="x" in trainable)
    W = Tensor(np.ones((d_out, d_in)), requires_grad="W" in trainable)
    y = ops.linear(x, W)
    with ops.record_matmuls() as log:
        y.backward(np.ones(y.shape))
    want = set()
    if "x" in trainable:
        want.add(((N, d_out), (d_out, d_in)))  # dx = dy W
    if "W" in trainable:
        want.add(((d_out, N), (N, d_in)))      # dW = dy^T x
    assert sorted(log) == sorted(want)
    assert (x.grad is None) == ("x" not in trainable) and (W.grad is None) == ("W" not in trainable)


def test_matmul_frozen_operand_costs_no_matmul():
    a, b = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones((3, 4)))
    y = ops.matmul(a, b)
    with ops.record_matmuls() as log:
        y.backward(np.ones((2, 4)))
    assert log == [((2, 4), (4, 3))]
    assert b.grad is None


@pytest.mark.parametrize("trainable, n_matmuls", [("v", 1), ("q", 2), ("k", 2), ("qk", 3), ("qkv", 4)])
def test_attention_backward_skips_frozen_inputs(trainable, n_matmuls):
    rng = np.random.default_rng(0)
    B, T, C, H = 2, 3, 4, 2
    q, k, v = (Tensor(rng.standard_normal((B, T, C)), requires_grad=n in trainable) for n in "qkv")
    out = ops.attention(q, k, v, n_head=H)
    with ops.record_matmuls() as log:
        out.backward(np.ones(out.shape))
    assert len(log) == n_matmuls  # dV: P^T dO;  dP: dO V^T (needed by dQ and dK);  dQ: dS K;  dK: dS^T Q
    for name, t in zip("qkv", (q, k, v), strict=True):
        assert (t.grad is None) == (name not in trainable)


def test_record_matmuls_sees_forward_products():
    with ops.record_matmuls() as log:
        ops.linear(Tensor(np.ones((5, 4))), Tensor(np.ones((3, 4))))
    assert log == [((5, 4), (4, 3))]


# ---- errors name the op, the shapes, the values ------------------------------------------------
def test_linear_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"linear: x \(2, 3\), W \(4, 5\), b None do not fit"):
        ops.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"linear: x \(2, 5\), W \(4, 5\), b \(3,\) do not fit"):
        ops.linear(Tensor(np.ones((2, 5))), Tensor(np.ones((4, 5))), Tensor(np.ones(3)))


def test_matmul_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) @ \(4, 5\) do not fit"):
        ops.matmul(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))


def test_add_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        ops.add(Tensor(np.ones((2, 3))), Tensor(np.ones(4)))


def test_dtype_mismatch_raises():
    a32, b64 = Tensor(np.ones((2, 3), dtype=np.float32)), Tensor(np.ones((3, 2), dtype=np.float64))
    with pytest.raises(TypeError, match="matmul: dtype mismatch.*float32.*float64"):
        ops.matmul(a32, b64)
    with pytest.raises(TypeError, match="mul: dtype mismatch"):
        ops.mul(a32, Tensor(np.ones((2, 3))))


def test_embedding_out_of_range_id_raises():
    W = Tensor(np.ones((5, 2)))
    with pytest.raises(IndexError, match="token id 7 is out of range for a vocabulary of 5"):
        ops.embedding(np.array([0, 7, 2]), W)
    with pytest.raises(IndexError, match="token id -1 is out of range"):
        ops.embedding(np.array([-1]), W)
    with pytest.raises(TypeError, match="token ids must be integers"):
        ops.embedding(np.array([0.0]), W)


def test_cross_entropy_out_of_range_target_raises():
    z = Tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError, match="target 9 is out of range for 4 classes"):
        ops.cross_entropy(z, np.array([0, 9, 1]))
    with pytest.raises(IndexError, match="target -2 is out of range"):
        ops.cross_entropy(z, np.array([0, -2, -100]))
    with pytest.raises(ValueError, match=r"need targets of shape \(3,\)"):
        ops.cross_entropy(z, np.array([0, 1]))


class _BadShape(Function):
    @staticmethod
    def forward(ctx, a):
        return a.sum()

    @staticmethod
    def backward(ctx, dout):
        return (dout,)  # should be broadcast back to a's shape


class _BadCount(Function):
    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, dout):
        return dout * 2, None


def test_broken_backward_is_reported_by_name():
    with pytest.raises(RuntimeError, match=r"_BadShape.backward gave grad of shape \(\) for an input"):
        _BadShape.apply(leaf([1.0, 2.0, 3.0])).backward()
    with pytest.raises(RuntimeError, match="_BadCount.backward returned 2 grads for 1 inputs"):
        _BadCount.apply(leaf([1.0])).sum().backward()


# ---- layering: autograd sits below ops ---------------------------------------------------------
def test_autograd_imports_without_the_ops():
    """minipeft.autograd alone (the package's __init__ skipped) imports no op module; until minipeft.ops
    registers them, Tensor's operators say so by name."""
    import subprocess
    import sys
    from pathlib import Path

    import minipeft

    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('minipeft'); pkg.__path__ = [sys.argv[1]]; sys.modules['minipeft'] = pkg\n"
        "import minipeft.autograd as ag\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('minipeft.ops'))\n"
        "assert not loaded, loaded\n"
        "try:\n"
        "    ag.Tensor([1.0]) + 1.0\n"
        "except RuntimeError as e:\n"
        "    assert \"Tensor operator 'add' has no implementation yet\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('+ worked without minipeft.ops')\n"
    )
    pkg_dir = str(Path(minipeft.__file__).parent)
    done = subprocess.run([sys.executable, "-c", code, pkg_dir], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_register_tensor_ops_refuses_unknown_names():
    from minipeft.autograd import register_tensor_ops

    with pytest.raises(ValueError, match=r"\['frobnicate'\] are not Tensor operators"):
        register_tensor_ops(frobnicate=len)
