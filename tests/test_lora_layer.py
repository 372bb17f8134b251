"""Spec of `LoraLinear`: scaling, initialisation, merge / unmerge, and forward while merged.

Merge tests start from a non-trivial adapter (init_lora_weights=False, or after an AdamW step) and
assert both merged == unmerged (to a bound derived from the dtype) and merged != base, so a merge
that does nothing cannot pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import merge_bound, seeded

from minipeft import Tensor, no_grad, to_numpy
from minipeft.nn import Linear
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, LoraLinear


def make_layer(d_in, d_out, r=4, alpha=8.0, dtype=np.float64, seed=0, init=False, rslora=False, dropout=0.0,
               bias=True) -> LoraLinear:
    with seeded(seed):
        layer = LoraLinear(Linear(d_in, d_out, bias=bias).to(dtype))
        if bias:  # a non-zero bias, so a path that drops it shows
            layer.base_layer.bias.data = (np.arange(d_out) / d_out - 0.5).astype(dtype)
        layer.update_layer("default", LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=init,
                                                 use_rslora=rslora))
    return layer


def run(layer, x) -> np.ndarray:
    with no_grad():
        return np.array(to_numpy(layer(Tensor(x)).data), copy=True)


def weight(layer) -> np.ndarray:
    return np.array(to_numpy(layer.base_layer.weight.data), copy=True)


@given(d_in=st.integers(2, 12), d_out=st.integers(2, 12), r=st.integers(1, 6), alpha=st.floats(1.0, 32.0),
       rslora=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), N=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_merged_equals_unmerged_and_differs_from_base(d_in, d_out, r, alpha, rslora, dtype, N, seed):
    layer = make_layer(d_in, d_out, r, alpha, dtype, seed, init=False, rslora=rslora)
    x = np.random.default_rng(seed).standard_normal((N, d_in)).astype(dtype)
    W0, b = weight(layer), to_numpy(layer.base_layer.bias.data)
    A, B = to_numpy(layer.lora_A["default"].weight.data), to_numpy(layer.lora_B["default"].weight.data)
    s = layer.scaling["default"]
    base = x @ W0.T + b
    unmerged = run(layer, x)
    layer.merge()
    merged = run(layer, x)
    tol = merge_bound(x, W0, b, A, B, s, dtype)
    assert merged.dtype == dtype
    assert (np.abs(merged - unmerged) <= tol).all(), f"max excess {(np.abs(merged - unmerged) - tol).max():.3e}"
    if dtype == np.float64:  # the project's headline number: ~1e-10 relative in float64
        assert np.abs(merged - unmerged).max() <= 1e-10 * np.abs(unmerged).max()
    assert np.abs(merged - base).max() > 100 * tol.max(), "merging changed nothing: the adapter is a no-op"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_after_an_adamw_step(dtype):
    """Default init (B = 0) plus one optimizer step: a trained adapter, not an init-time special case."""
    layer = make_layer(6, 5, r=2, alpha=4.0, dtype=dtype, init=True)
    layer.base_layer.freeze()
    x = np.random.default_rng(5).standard_normal((8, 6)).astype(dtype)
    opt = AdamW(layer.parameters(trainable_only=True), lr=0.1)
    (layer(Tensor(x)) ** 2).sum().backward()
    opt.step()
    B = to_numpy(layer.lora_B["default"].weight.data)
    assert np.abs(B).min() > 0, "one AdamW step moves every entry of B off zero"
    W0, b = weight(layer), to_numpy(layer.base_layer.bias.data)
    A = to_numpy(layer.lora_A["default"].weight.data)
    unmerged = run(layer, x)
    layer.merge()
    merged = run(layer, x)
    tol = merge_bound(x, W0, b, A, B, layer.scaling["default"], dtype)
    assert (np.abs(merged - unmerged) <= tol).all()
    assert np.abs(merged - (x @ W0.T + b)).max() > 100 * tol.max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unmerge_restores_W0_and_20_cycles_do_not_drift(dtype):
    """W <- fl(W + D) then W <- fl(W - D), with D = s B A the same array each time: each op rounds once,
    by at most u |result| <= u (|W0| + |D| + drift), u = eps / 2. One cycle is within eps (|W0| + |D|)
    of W0, and 20 cycles within 20 eps (|W0| + |D|), elementwise (1.01x for the drift term itself)."""
    layer = make_layer(9, 7, r=3, alpha=16.0, dtype=dtype)
    W0 = weight(layer)
    D = to_numpy(layer.get_delta_weight("default"))
    eps = float(np.finfo(dtype).eps)
    scale = np.abs(W0) + np.abs(D)
    layer.merge()
    assert np.abs(weight(layer) - W0).max() > 0.01, "merge did not change W0"
    layer.unmerge()
    assert not layer.merged
    assert (np.abs(weight(layer) - W0) <= 1.01 * eps * scale).all()
    for _ in range(19):
        layer.merge()
        layer.unmerge()
    assert (np.abs(weight(layer) - W0) <= 1.01 * 20 * eps * scale).all()


def test_delta_weight_is_scaled_B_times_A():
    for rslora, s in [(False, 16.0 / 4), (True, 16.0 / math.sqrt(4))]:
        layer = make_layer(5, 3, r=4, alpha=16.0, rslora=rslora)
        assert layer.scaling["default"] == pytest.approx(s, rel=1e-15)
        A, B = to_numpy(layer.lora_A["default"].weight.data), to_numpy(layer.lora_B["default"].weight.data)
        np.testing.assert_allclose(to_numpy(layer.get_delta_weight("default")), s * B @ A, rtol=1e-14)
        W0 = weight(layer)
        layer.merge()
        np.testing.assert_allclose(weight(layer), W0 + s * B @ A, rtol=1e-14, atol=1e-15)


def test_merging_twice_raises_and_leaves_W_alone():
    layer = make_layer(4, 3)
    layer.merge()
    W = weight(layer)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    np.testing.assert_array_equal(weight(layer), W)


def test_unmerging_an_unmerged_layer_raises():
    layer = make_layer(4, 3)
    W0 = weight(layer)
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        layer.unmerge()
    np.testing.assert_array_equal(weight(layer), W0)


def test_forward_while_merged_does_not_add_the_lora_path_again():
    layer = make_layer(6, 4, r=2, alpha=8.0)
    x = np.random.default_rng(0).standard_normal((3, 6))
    W0, b = weight(layer), to_numpy(layer.base_layer.bias.data)
    D = to_numpy(layer.get_delta_weight("default"))
    layer.merge()
    merged = run(layer, x)
    np.testing.assert_array_equal(merged, run(layer.base_layer, x))          # exactly the merged Linear
    np.testing.assert_allclose(merged, x @ (W0 + D).T + b, rtol=1e-12)        # W0 + D, once
    assert np.abs(merged - (x @ (W0 + 2 * D).T + b)).max() > 0.1              # not W0 + 2D


def test_default_init_B_is_zero_so_output_is_bit_exact_base():
    """A is kaiming-uniform (non-zero), B = 0: the low-rank path adds exact zeros (x + 0 == x in IEEE)."""
    for dtype in (np.float32, np.float64):
        layer = make_layer(8, 5, r=3, dtype=dtype, init=True)
        A, B = to_numpy(layer.lora_A["default"].weight.data), to_numpy(layer.lora_B["default"].weight.data)
        assert A.dtype == B.dtype == dtype
        assert (B == 0).all() and np.abs(A).min() > 0 and np.abs(A).max() <= 1 / math.sqrt(8)
        x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(dtype)
        np.testing.assert_array_equal(run(layer, x), run(layer.base_layer, x))


def test_gaussian_init_draws_A_with_std_one_over_r():
    with seeded(0):
        layer = LoraLinear(Linear(400, 3).to(np.float64))
        layer.update_layer("g", LoraConfig(r=4, lora_alpha=8.0, init_lora_weights="gaussian"))
    A = to_numpy(layer.lora_A["g"].weight.data)
    assert abs(A.std() - 1 / 4) < 0.02 and (to_numpy(layer.lora_B["g"].weight.data) == 0).all()


def test_dropout_only_in_training_mode():
    layer = make_layer(6, 4, r=2, dropout=0.5)
    x = np.random.default_rng(0).standard_normal((5, 6))
    layer.eval()
    ev = run(layer, x)
    A, B = to_numpy(layer.lora_A["default"].weight.data), to_numpy(layer.lora_B["default"].weight.data)
    W0, b = weight(layer), to_numpy(layer.base_layer.bias.data)
    np.testing.assert_allclose(ev, x @ W0.T + b + layer.scaling["default"] * (x @ A.T) @ B.T, rtol=1e-12)
    layer.train()
    with seeded(1):
        tr = run(layer, x)
    assert np.abs(tr - ev).max() > 1e-3


def test_adapters_are_named_and_managed():
    layer = make_layer(4, 3)
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["base_layer.weight", "base_layer.bias", "lora_A.default.weight", "lora_B.default.weight"]
    assert layer.active_adapter == "default" and not layer.merged
    with pytest.raises(ValueError, match="already exists"):
        layer.update_layer("default", LoraConfig(r=2, lora_alpha=4.0))
    layer.update_layer("other", LoraConfig(r=2, lora_alpha=4.0))
    assert layer.active_adapter == "default"          # adding does not activate
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.delete_adapter("default")
    layer.unmerge()
    layer.delete_adapter("default")
    assert layer.active_adapter == "other" and "default" not in layer.lora_A
    assert all("default" not in n for n, _ in layer.named_parameters())


def test_wraps_only_a_linear():
    with pytest.raises(TypeError, match="wraps a Linear"):
        LoraLinear(object())
