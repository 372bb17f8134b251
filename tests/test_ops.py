"""Elementwise, linear-algebra and shape ops: forward equals NumPy, backward equals central differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    array_and_shape,
    arrays,
    away_from_zero,
    axes_for,
    broadcastable_shapes,
    matmul_shapes,
    positive,
    shapes,
)

from minipeft import Function, Tensor, ops, to_numpy


def identity(a):
    return a


def gelu_ref(x):
    """GPT-2's tanh approximation, written out."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


class _WrongMul(Function):
    """y = a * b with a deliberately wrong db (missing the factor a), to prove grad_check can fail."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved
        return dout * b, dout


def test_grad_check_catches_a_wrong_backward():
    a, b = np.array([[1.0, 1.0], [1.0, -4.0]]), np.array([[0.5, 1.5], [2.5, 3.5]])
    grad_check(_WrongMul.apply, [a, b], "wrong_mul", wrt=[0])  # da is right
    # db = dout is right only where a == 1, so element (1, 1) is the one that must be reported
    with pytest.raises(AssertionError, match=r"wrong_mul: gradient of argument 1 is wrong at index \(1, 1\): "
                                             r"autograd .* vs numerical .* \(maxdiff"):
        grad_check(_WrongMul.apply, [a, b], "wrong_mul")


# name -> (op, numpy reference, domain shift of the input)
UNARY = {
    "neg": (ops.neg, np.negative, identity),
    "exp": (ops.exp, np.exp, identity),
    "log": (ops.log, np.log, positive),
    "tanh": (ops.tanh, np.tanh, identity),
    "relu": (ops.relu, lambda a: np.maximum(a, 0.0), away_from_zero),
    "gelu": (ops.gelu, gelu_ref, identity),
}

# name -> (op, numpy reference, shift of a, shift of b)
BINARY = {
    "add": (ops.add, np.add, identity, identity),
    "sub": (ops.sub, np.subtract, identity, identity),
    "mul": (ops.mul, np.multiply, identity, identity),
    "div": (ops.div, np.divide, identity, away_from_zero),
    "pow": (ops.pow, np.power, positive, identity),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(x=array_and_shape(max_size=24))
def test_unary_forward_and_grad(name, x):
    op, ref, shift = UNARY[name]
    x = shift(x)
    np.testing.assert_allclose(op(Tensor(x)).numpy(), ref(x), rtol=1e-12, atol=1e-14, err_msg=name)
    grad_check(op, [x], name)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_broadcast_forward_and_grad(name, data):
    op, ref, shift_a, shift_b = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes())
    a, b = shift_a(data.draw(arrays(sa))), shift_b(data.draw(arrays(sb)))
    out = op(Tensor(a), Tensor(b))
    np.testing.assert_allclose(out.numpy(), ref(a, b), rtol=1e-12, atol=1e-14, err_msg=name)
    grad_check(op, [a, b], name)  # also checks each grad has its input's (un-broadcast) shape


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow"])
def test_binary_with_python_scalar_keeps_dtype(name):
    op, ref = BINARY[name][:2]
    x = np.array([0.5, 1.5, 2.0], dtype=np.float32)
    two, three = np.float32(2.0), np.float32(3.0)
    for out, want in ((op(Tensor(x), 2.0), ref(x, two)), (op(3.0, Tensor(x)), ref(three, x))):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)


def test_operator_sugar_matches_ops():
    a, b = np.array([[1.0, -2.0], [3.0, 0.5]]), np.array([2.0, 4.0])
    A, Bt = Tensor(a), Tensor(b)
    np.testing.assert_allclose((A + Bt).numpy(), a + b)
    np.testing.assert_allclose((1.0 - A).numpy(), 1.0 - a)
    np.testing.assert_allclose((A * Bt / 2.0).numpy(), a * b / 2.0)
    np.testing.assert_allclose((2.0 / Bt).numpy(), 2.0 / b)
    np.testing.assert_allclose((-A).numpy(), -a)
    np.testing.assert_allclose((Bt**2).numpy(), b**2)
    np.testing.assert_allclose((A @ A).numpy(), a @ a)
    np.testing.assert_allclose(A.T.numpy(), a.T)
    np.testing.assert_allclose(A.reshape(4).numpy(), a.reshape(4))


@given(data=st.data())
def test_pow_grad_wrt_both_base_and_exponent(data):
    sa, sb = data.draw(broadcastable_shapes(max_dims=2, max_side=3))
    a, b = positive(data.draw(arrays(sa))), data.draw(arrays(sb))
    grad_check(ops.pow, [a, b], "pow")


# ---- matmul and linear ------------------------------------------------------------------------
@given(data=st.data())
def test_matmul_batched_broadcast(data):
    sa, sb = data.draw(matmul_shapes())
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    np.testing.assert_allclose(ops.matmul(Tensor(a), Tensor(b)).numpy(), a @ b, rtol=1e-12, atol=1e-12)
    grad_check(ops.matmul, [a, b], "matmul")


@pytest.mark.parametrize("bias", [True, False])
@given(data=st.data())
def test_linear(bias, data):
    lead = data.draw(shapes(min_dims=0, max_dims=2, max_side=3))
    d_in, d_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x, W = data.draw(arrays((*lead, d_in))), data.draw(arrays((d_out, d_in)))
    if bias:
        b = data.draw(arrays((d_out,)))
        np.testing.assert_allclose(ops.linear(Tensor(x), Tensor(W), Tensor(b)).numpy(), x @ W.T + b,
                                   rtol=1e-12, atol=1e-12)
        grad_check(ops.linear, [x, W, b], "linear")
    else:
        np.testing.assert_allclose(ops.linear(Tensor(x), Tensor(W)).numpy(), x @ W.T, rtol=1e-12, atol=1e-12)
        grad_check(ops.linear, [x, W], "linear (no bias)")


# ---- reductions and shape ops -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean"])
@given(data=st.data(), keepdims=st.booleans())
def test_reductions(name, data, keepdims):
    x = data.draw(array_and_shape(max_size=32))
    axis = data.draw(axes_for(x.ndim))
    op, ref = (ops.sum, np.sum) if name == "sum" else (ops.mean, np.mean)
    out = op(Tensor(x), axis=axis, keepdims=keepdims)
    want = ref(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(want)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    grad_check(lambda t: op(t, axis=axis, keepdims=keepdims), [x], f"{name}({axis=}, {keepdims=})")


def test_reduction_bad_axis_raises():
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        ops.sum(Tensor(np.zeros((2, 3))), axis=2)


@given(x=array_and_shape(max_size=24), data=st.data())
def test_reshape(x, data):
    new = data.draw(st.sampled_from([(x.size,), (1, x.size), (x.size, 1), (-1,), x.shape[::-1]]))
    np.testing.assert_array_equal(ops.reshape(Tensor(x), new).numpy(), x.reshape(new))
    grad_check(lambda t: ops.reshape(t, new), [x], f"reshape{new}")


@given(data=st.data())
def test_broadcast_to(data):
    sx, sy = data.draw(broadcastable_shapes())
    target = np.broadcast_shapes(sx, sy)
    x = data.draw(arrays(sx))
    out = ops.broadcast_to(Tensor(x), target)
    np.testing.assert_array_equal(out.numpy(), np.broadcast_to(x, target))
    assert out.data.flags.c_contiguous
    grad_check(lambda t: ops.broadcast_to(t, target), [x], f"broadcast_to{sx}->{target}")


def test_broadcast_to_bad_shape_raises():
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast a tensor of shape \(2, 3\) to \(4, 3\)"):
        ops.broadcast_to(Tensor(np.zeros((2, 3))), (4, 3))


def test_reshape_bad_shape_raises():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) to \(4,\)"):
        ops.reshape(Tensor(np.zeros((2, 3))), (4,))


@given(x=array_and_shape(max_size=32), data=st.data())
def test_transpose_permute(x, data):
    perm = tuple(data.draw(st.permutations(range(x.ndim))))
    np.testing.assert_array_equal(ops.permute(Tensor(x), perm).numpy(), x.transpose(perm))
    np.testing.assert_array_equal(ops.transpose(Tensor(x)).numpy(), x.T)
    grad_check(lambda t: ops.permute(t, perm), [x], f"permute{perm}")
    grad_check(ops.transpose, [x], "transpose")


@given(data=st.data())
def test_concat(data):
    base = data.draw(shapes(max_dims=3, max_side=3))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    xs = []
    for n in sizes:
        s = list(base)
        s[axis] = n
        xs.append(data.draw(arrays(tuple(s))))
    np.testing.assert_array_equal(ops.concat([Tensor(x) for x in xs], axis=axis).numpy(),
                                  np.concatenate(xs, axis=axis))
    grad_check(lambda *ts: ops.concat(list(ts), axis=axis), xs, f"concat(axis={axis})")


def test_concat_mismatch_raises():
    with pytest.raises(ValueError, match="concat: shapes"):
        ops.concat([Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 4)))], axis=0)


@given(data=st.data())
def test_split(data):
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    base = list(data.draw(shapes(max_dims=3, max_side=3)))
    axis = data.draw(st.integers(0, len(base) - 1))
    base[axis] = sum(sizes)
    x = data.draw(arrays(tuple(base)))
    parts = ops.split(Tensor(x), sizes, axis=axis)
    for p, want in zip(parts, np.split(x, np.cumsum(sizes)[:-1], axis=axis), strict=True):
        np.testing.assert_array_equal(p.numpy(), want)
    j = data.draw(st.integers(0, len(sizes) - 1))
    grad_check(lambda t: ops.split(t, sizes, axis=axis)[j], [x], f"split part {j}")
    # all parts used at once: their gradients must tile the input's gradient exactly once
    grad_check(lambda t: ops.concat([p * float(i + 1) for i, p in enumerate(ops.split(t, sizes, axis=axis))],
                                    axis=axis), [x], "split (all parts)")


def test_split_equal_chunks_and_errors():
    x = Tensor(np.arange(6.0))
    assert [p.numpy().tolist() for p in ops.split(x, 2)] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match="does not divide"):
        ops.split(x, 4)
    with pytest.raises(ValueError, match="do not add up to 6"):
        ops.split(x, [2, 3])


@given(data=st.data())
def test_getitem_basic_slices(data):
    x = data.draw(array_and_shape(max_dims=3, max_size=32))
    idx = []
    for n in x.shape:
        kind = data.draw(st.sampled_from(["all", "int", "slice"]))
        if kind == "int":
            idx.append(data.draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            start = data.draw(st.integers(0, n - 1))
            idx.append(slice(start, data.draw(st.integers(start + 1, n)), data.draw(st.integers(1, 2))))
        else:
            idx.append(slice(None))
    idx = tuple(idx)
    np.testing.assert_array_equal(ops.getitem(Tensor(x), idx).numpy(), x[idx])
    grad_check(lambda t: t[idx], [x], f"getitem{idx}")


@given(data=st.data())
def test_getitem_integer_array_with_repeats(data):
    x = data.draw(array_and_shape(max_dims=3, max_side=4, max_size=32))
    rows = np.array(data.draw(st.lists(st.integers(-x.shape[0], x.shape[0] - 1), min_size=1, max_size=6)))
    np.testing.assert_array_equal(ops.getitem(Tensor(x), Tensor(rows)).numpy(), x[rows])
    grad_check(lambda t: ops.getitem(t, Tensor(rows)), [x], f"getitem[{rows.tolist()}]")


def test_getitem_repeated_index_accumulates():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    x[Tensor(np.array([0, 2, 0, 0]))].sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [3.0, 0.0, 1.0])
    # strictly increasing indices take the fast scatter_add's plain `+=`, but -3 and 0 both name row 0
    x.zero_grad()
    x[Tensor(np.array([-3, 0, 2]))].sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 0.0, 1.0])
