"""Spec of minipeft.nn's machinery and basic layers: Module, Parameter, ModuleList, Linear, LayerNorm,
Dropout.

The GPT model itself (and its config) is specified in test_gpt.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import arrays, shapes

import minipeft
from minipeft import Tensor, backend, to_numpy
from minipeft.nn import (
    GPT,
    Dropout,
    Embedding,
    GPTConfig,
    LayerNorm,
    Linear,
    Module,
    ModuleDict,
    ModuleList,
    Parameter,
    ParameterDict,
)


def build_gpt(seed: int = 0, **overrides) -> GPT:
    """A "test"-preset GPT built from its own seed, leaving the global generator as it was."""
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        return GPT(GPTConfig.from_preset("test", **overrides))


class Pair(Module):
    """Two linear layers and a loose parameter, set in the order a, scale, b."""

    def __init__(self):
        self.a = Linear(3, 4)
        self.scale = Parameter(np.ones(4, dtype=np.float32))
        self.b = Linear(4, 2, bias=False)

    def forward(self, x):
        return self.b(self.a(x) * self.scale)


# ---- discovery: names, order, sharing ----------------------------------------------------------------------
def test_named_parameters_own_first_then_children_in_attribute_order():
    # as in PyTorch: a module's own parameters, then each child's subtree in the order it was set
    names = [n for n, _ in Pair().named_parameters()]
    assert names == ["scale", "a.weight", "a.bias", "b.weight"]  # b has no bias: None is not a parameter


def test_named_parameters_prefix_and_nested_paths():
    outer = Module()
    outer.inner = Pair()
    outer.layers = ModuleList([Linear(2, 2), Linear(2, 2, bias=False)])
    names = [n for n, _ in outer.named_parameters(prefix="model")]
    assert names == ["model.inner.scale", "model.inner.a.weight", "model.inner.a.bias",
                     "model.inner.b.weight", "model.layers.0.weight", "model.layers.0.bias",
                     "model.layers.1.weight"]
    assert [n for n, _ in outer.named_modules()] == ["", "inner", "inner.a", "inner.b", "layers", "layers.0",
                                                     "layers.1"]


def test_gpt_parameter_names_in_definition_order():
    names = [n for n, _ in build_gpt(n_layer=2).named_parameters()]
    block = ["ln_1.weight", "ln_1.bias"]
    block += [f"attn.{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")]
    block += ["ln_2.weight", "ln_2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = (["wte.weight", "wpe.weight"] + [f"blocks.{i}.{n}" for i in range(2) for n in block]
                + ["ln_f.weight", "ln_f.bias"])
    assert names == expected
    assert "blocks.0.attn.q_proj.weight" in names


def test_shared_module_and_shared_parameter_listed_once_and_grads_accumulate():
    m = Module()
    m.a = Linear(3, 4)
    m.alias = m.a                       # the same module under a second name
    m.d = Linear(3, 4)
    m.d.weight = m.a.weight             # a tied weight: one Parameter in two layers
    names = [n for n, _ in m.named_parameters()]
    assert names == ["a.weight", "a.bias", "d.bias"]
    assert m.num_parameters() == 12 + 4 + 4
    assert [n for n, _ in m.named_modules()] == ["", "a", "d"]
    # y = x W^T + b_a + x W^T + b_d  =>  dW = 2 * sum_rows(dy)^T x: both uses add into one .grad
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (m.a(Tensor(x)) + m.d(Tensor(x))).sum().backward()
    np.testing.assert_allclose(to_numpy(m.a.weight.grad), 2 * np.ones((4, 2)) @ x, rtol=1e-6)


def test_trainable_only_filters_after_freeze():
    model = build_gpt()
    total = model.num_parameters()
    model.freeze()
    assert model.parameters(trainable_only=True) == []
    assert model.num_parameters(trainable_only=True) == 0
    assert model.num_parameters() == total               # frozen parameters still count in the total
    for p in model.ln_f.parameters():
        p.requires_grad = True
    assert [n for n, _ in model.named_parameters(trainable_only=True)] == ["ln_f.weight", "ln_f.bias"]
    assert model.num_parameters(trainable_only=True) == 2 * model.config.d_model
    model.unfreeze()
    assert model.num_parameters(trainable_only=True) == total


def test_parameter_requires_grad_by_default():
    p = Parameter(np.zeros(3, dtype=np.float32))
    assert p.requires_grad and p.is_leaf and p.grad is None
    assert not Parameter(np.zeros(3, dtype=np.float32), requires_grad=False).requires_grad


def test_zero_grad_clears_every_grad():
    model = Pair()
    model(Tensor(np.ones((2, 3), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---- modes -------------------------------------------------------------------------------------------------
def test_train_and_eval_reach_every_submodule():
    model = build_gpt(dropout=0.1)
    assert model.eval() is model
    assert all(not m.training for _, m in model.named_modules())
    assert not model.blocks[1].attn.dropout.training
    model.train()
    assert all(m.training for _, m in model.named_modules())
    model.blocks.train(False)                      # a subtree only
    assert model.training and model.drop.training and not model.blocks[0].mlp.dropout.training


# ---- paths -------------------------------------------------------------------------------------------------
def test_get_submodule_by_dotted_path():
    model = build_gpt()
    assert model.get_submodule("blocks.1.attn.q_proj") is model.blocks[1].attn.q_proj
    assert model.get_submodule("") is model
    assert model.get_submodule("blocks.0") is model.blocks[0]


@pytest.mark.parametrize("path, part", [("blocks.7.attn", "7"), ("blocks.0.atn.q_proj", "atn"),
                                        ("ln_f.weight", "weight"), ("blocks.0.attn.n_head", "n_head")])
def test_get_submodule_bad_path_names_path_and_failing_part(path, part):
    with pytest.raises(AttributeError, match=re.escape(f"{path!r} (failed at {part!r})")):
        build_gpt().get_submodule(path)


def test_set_submodule_replaces_in_place_and_keeps_the_name():
    model = build_gpt()
    new = Linear(16, 16, bias=False)
    model.set_submodule("blocks.0.attn.v_proj", new)
    assert model.blocks[0].attn.v_proj is new
    named = dict(model.named_parameters())
    assert named["blocks.0.attn.v_proj.weight"] is new.weight
    assert "blocks.0.attn.v_proj.bias" not in named
    names = [n for n, _ in model.named_parameters()]   # the replacement sits where the old layer was
    assert names.index("blocks.0.attn.k_proj.bias") < names.index("blocks.0.attn.v_proj.weight") \
        < names.index("blocks.0.attn.out_proj.weight")


def test_set_submodule_errors():
    model = build_gpt()
    with pytest.raises(AttributeError, match="blocks.0.attn.w_proj"):
        model.set_submodule("blocks.0.attn.w_proj", Linear(16, 16))     # nothing there to replace
    with pytest.raises(AttributeError, match="n_head"):
        model.set_submodule("blocks.0.attn.n_head", Linear(16, 16))     # an attribute, not a module
    with pytest.raises(AttributeError, match="blocks.9"):
        model.set_submodule("blocks.9.attn", Linear(16, 16))
    with pytest.raises(TypeError, match="expected a Module, got Parameter"):
        model.set_submodule("blocks.0.attn.q_proj", model.blocks[0].attn.q_proj.weight)


def test_module_list_indexing():
    ml = ModuleList([Linear(1, 1), Linear(1, 2)])
    assert len(ml) == 2 and ml[-1] is ml[1] and list(ml) == [ml[0], ml[1]]
    assert ml[1].out_features == 2
    with pytest.raises(IndexError, match="index 2 out of range for length 2"):
        ml[2]


# ---- state -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["modules", "parameters"])
def test_module_dict_and_parameter_dict_name_their_values_by_key(kind):
    """What adapters are kept in: `<key>.weight` for a ModuleDict of layers, `<key>` for a ParameterDict."""
    holder = Module()
    if kind == "modules":
        holder.d = ModuleDict({"a": Linear(2, 3, bias=False), "b": Linear(2, 1, bias=False)})
        names, wrong = ["d.a.weight", "d.b.weight"], Parameter(np.ones(2))
    else:
        holder.d = ParameterDict({"a": Parameter(np.ones(3)), "b": Parameter(np.zeros(2))})
        names, wrong = ["d.a", "d.b"], Linear(2, 1)
    assert [n for n, _ in holder.named_parameters()] == names
    assert holder.d.keys() == ["a", "b"] and "a" in holder.d and len(holder.d) == 2
    del holder.d["a"]
    assert [n for n, _ in holder.named_parameters()] == names[1:] and "a" not in holder.d
    with pytest.raises(KeyError, match="no .* named 'a'; have \\['b'\\]"):
        holder.d["a"]
    with pytest.raises(TypeError, match=f"values must be {'Module' if kind == 'modules' else 'Parameter'}s"):
        holder.d["c"] = wrong


def test_state_dict_round_trip_is_bit_exact():
    src, dst = build_gpt(seed=1), build_gpt(seed=2)
    state = src.state_dict()
    assert list(state) == [n for n, _ in src.named_parameters()]
    assert not np.array_equal(to_numpy(dst.wte.weight), to_numpy(src.wte.weight))
    assert dst.load_state_dict(state) == ([], [])
    for name, p in dst.named_parameters():
        assert p.dtype == state[name].dtype and np.array_equal(to_numpy(p.data), to_numpy(state[name])), name
    ids = np.arange(12).reshape(2, 6)
    assert np.array_equal(dst(ids)[0].numpy(), src(ids)[0].numpy())
    src.ln_f.weight.data += 1.0                  # the load copied: the source stays independent
    assert not np.array_equal(to_numpy(dst.ln_f.weight), to_numpy(src.ln_f.weight))


def test_load_state_dict_strict_names_missing_and_unexpected_keys():
    model = build_gpt()
    state = dict(model.state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['blocks\.1\.mlp\.fc2\.bias'\]") as e:
        model.load_state_dict(state)
    assert "strict=False" in str(e.value)
    state = dict(model.state_dict(), **{"lm_head.weight": np.zeros((64, 16), np.float32)})
    with pytest.raises(KeyError, match=r"unexpected keys \['lm_head\.weight'\]"):
        model.load_state_dict(state)


def test_load_state_dict_shape_mismatch_names_key_and_both_shapes_and_loads_nothing():
    model = build_gpt(seed=3)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = dict(build_gpt(seed=4).state_dict())
    state["ln_f.bias"] = np.zeros(17, np.float32)     # the last key: every other one would fit
    message = "ln_f.bias has shape (17,) in the state but (16,) in the model"
    with pytest.raises(ValueError, match=re.escape(message)):
        model.load_state_dict(state, strict=False)
    for name, arr in model.state_dict().items():       # all-or-nothing: no half-loaded model
        assert np.array_equal(to_numpy(arr), to_numpy(before[name])), name


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    model, other = build_gpt(seed=5), build_gpt(seed=6)
    state = {"ln_f.weight": to_numpy(other.ln_f.weight), "head.extra": np.ones(3),
             "wpe.weight": other.wpe.weight.data}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == ["head.extra"]
    assert missing == [n for n, _ in model.named_parameters() if n not in ("ln_f.weight", "wpe.weight")]
    assert np.array_equal(to_numpy(model.wpe.weight), to_numpy(other.wpe.weight))
    assert not np.array_equal(to_numpy(model.wte.weight), to_numpy(other.wte.weight))


def test_to_float64_casts_every_parameter_and_keeps_values():
    model = build_gpt()
    ids = np.arange(10).reshape(2, 5)
    logits32 = model(ids)[0].numpy()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.to(np.float64) is model
    assert {p.dtype for p in model.parameters()} == {np.dtype(np.float64)}
    for name, arr in model.state_dict().items():
        assert np.array_equal(to_numpy(arr), to_numpy(before[name]).astype(np.float64)), name   # float32 -> 64 is exact
    logits64 = model(ids)[0].numpy()
    assert logits64.dtype == np.float64
    np.testing.assert_allclose(logits64, logits32, rtol=1e-4, atol=1e-6)  # float32 roundoff ~1e-7 * depth
    with pytest.raises(TypeError, match="int32"):
        model.to(np.int32)


# ---- layers ------------------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(st.data(), shapes(min_dims=1, max_dims=3, max_side=4), st.integers(1, 5), st.booleans())
def test_linear_forward_is_x_at_W_T_plus_b(data, lead, n_out, bias):
    n_in = lead[-1]
    layer = Linear(n_in, n_out, bias=bias).to(np.float64)
    if bias:
        layer.bias.data = data.draw(arrays((n_out,)))
    x = data.draw(arrays(lead))
    y = layer(Tensor(x)).numpy()
    W = to_numpy(layer.weight)
    expected = x @ W.T + (to_numpy(layer.bias) if bias else 0.0)
    assert y.shape == (*lead[:-1], n_out)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_linear_init_and_validation():
    layer = Linear(64, 8)
    assert layer.weight.shape == (8, 64) and layer.bias.shape == (8,)
    assert np.abs(to_numpy(layer.weight)).max() <= 1 / 8          # kaiming-uniform bound 1/sqrt(in)
    assert not to_numpy(layer.bias).any()
    with pytest.raises(ValueError, match="got 0, 3"):
        Linear(0, 3)


def test_embedding_rows():
    emb = Embedding(10, 4)
    ids = np.array([[3, 3, 9]])
    np.testing.assert_array_equal(emb(ids).numpy(), to_numpy(emb.weight)[ids])


@settings(max_examples=20)
@given(shapes(min_dims=1, max_dims=3, max_side=6).filter(lambda s: s[-1] >= 2),
       st.floats(-3, 3), st.floats(-3, 3), st.integers(0, 2**32 - 1))
def test_layer_norm_output_has_zero_mean_unit_variance(shape, log_scale, shift, seed):
    x = np.random.default_rng(seed).standard_normal(shape) * 10.0**log_scale + shift * 10
    ln = LayerNorm(shape[-1]).to(np.float64)
    y = ln(Tensor(x)).numpy()
    var = x.var(axis=-1, keepdims=True)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-10)
    # the eps under the square root shrinks the variance to var / (var + eps), not exactly 1
    np.testing.assert_allclose(y.var(axis=-1, keepdims=True), var / (var + ln.eps), rtol=1e-9)


def test_layer_norm_scale_and_shift():
    ln = LayerNorm(3).to(np.float64)
    ln.weight.data = np.array([1.0, 2.0, -1.0])
    ln.bias.data = np.array([0.5, 0.0, 1.0])
    x = np.array([[1.0, 2.0, 3.0]])
    xhat = (x - 2.0) / np.sqrt(2.0 / 3.0 + 1e-5)
    np.testing.assert_allclose(ln(Tensor(x)).numpy(), xhat * [1.0, 2.0, -1.0] + [0.5, 0.0, 1.0], rtol=1e-12)


def test_dropout_is_identity_in_eval_and_at_p_zero():
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    drop = Dropout(0.5).eval()
    assert np.array_equal(drop(x).numpy(), x.numpy())
    assert np.array_equal(Dropout(0.0)(x).numpy(), x.numpy())


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_zeroes_fraction_p_and_scales_the_rest(p, keep_rng):
    minipeft.manual_seed(7)
    x = Tensor(np.ones((200, 500), dtype=np.float32), requires_grad=True)
    y = Dropout(p)(x)
    out = y.numpy()
    zero = out == 0
    # 1e5 Bernoulli(p) draws: the zero fraction has std sqrt(p(1-p)/1e5) <= 0.0016; 0.01 is > 6 sigma
    assert abs(zero.mean() - p) < 0.01
    np.testing.assert_array_equal(out[~zero], np.float32(1 / (1 - p)))   # inverted dropout keeps E[y] = x
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), out)  # dx = mask / (1 - p): the same mask as the forward
    minipeft.manual_seed(7)
    assert np.array_equal(Dropout(p)(x).numpy(), out)   # seeded: the same mask again


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match=re.escape(f"p must be in [0, 1), got {p}")):
        Dropout(p)
