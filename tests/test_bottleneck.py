"""Spec of bottleneck adapters: out = y + f(y W_down^T + b_down) W_up^T + b_up after a Linear (Houlsby et al., 2019;
Pfeiffer et al., 2020).

Proves the op's equation and every gradient against float64 central differences (GELU and ReLU), that frozen
inputs cost no gradient product, the closed-form count 2 d m + d + m per adapter over random model shapes and
both layouts, that a fresh adapter leaves the model's output bit-identical, that merging is refused with the
reason, the adapter file's names and its bit-exact round trip, and that bad configs are named.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import batch, build_gpt, logits, seeded
from safetensors.numpy import load_file

from minipeft import Tensor, to_numpy
from minipeft.nn import GPT, GPTConfig, Linear
from minipeft.ops import record_matmuls
from minipeft.optim import AdamW
from minipeft.peft import AdapterError, BottleneckConfig, ConfigError, PeftModel, get_peft_model
from minipeft.peft.save_load import base_named_parameters
from minipeft.peft.tuners.bottleneck import BottleneckLayer, bottleneck_adapter
from minipeft.peft.tuners.bottleneck.config import SUBLAYER_OUTPUTS


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(2019):
        yield


@st.composite
def adapter_problem(draw, max_side: int = 4):
    """(y, W_down, b_down, W_up, b_up) in float64: y (*batch, d), W_down (m, d), W_up (d, m), biases or None.

    Values come from a drawn seed (standard normal), not from Hypothesis' floats, which favour 0.0: ReLU's
    kink at z = 0 would then sit inside the central difference's step.
    """
    d, m = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    shape = (*draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)), d)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bias = draw(st.booleans())
    return (rng.standard_normal(shape), rng.standard_normal((m, d)), rng.standard_normal(m) if bias else None,
            rng.standard_normal((d, m)), rng.standard_normal(d) if bias else None)


def reference(y, Wd, bd, Wu, bu, kind):
    """The equation in plain NumPy; GELU in GPT-2's tanh form, as the model's own MLP uses."""
    z = y @ Wd.T + (0 if bd is None else bd)
    a = np.maximum(z, 0) if kind == "relu" else 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    return y + a @ Wu.T + (0 if bu is None else bu)


def tensors(*arrays):
    return [None if a is None else Tensor(a) for a in arrays]


KINDS = pytest.mark.parametrize("kind", ["relu", "gelu"])


@KINDS
@given(adapter_problem())
def test_forward_matches_the_equation(kind, problem):
    out = bottleneck_adapter(*tensors(*problem), non_linearity=kind)
    assert out.shape == problem[0].shape
    np.testing.assert_allclose(to_numpy(out.data), reference(*problem, kind), rtol=1e-12, atol=1e-12)


@KINDS
@given(adapter_problem())
def test_grad_check_every_input(kind, problem):
    """Central differences (float64) for y, W_down, b_down, W_up and b_up at once."""
    y, Wd, bd, Wu, bu = problem
    if bd is None:
        grad_check(lambda y_, Wd_, Wu_: bottleneck_adapter(y_, Wd_, None, Wu_, None, kind), [y, Wd, Wu],
                   f"bottleneck_adapter[{kind}]")
    else:
        grad_check(lambda *t: bottleneck_adapter(*t, non_linearity=kind), [y, Wd, bd, Wu, bu],
                   f"bottleneck_adapter[{kind}]")


@KINDS
def test_grad_check_with_a_zero_up_projection(kind):
    """At initialisation W_up = 0: the output is y, yet W_up's gradient (dout^T f(z)) is not zero."""
    rng = np.random.default_rng(3)
    y, Wd, bd, bu = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 5)), rng.standard_normal(2), np.zeros(5)
    Wu = np.zeros((5, 2))
    grad_check(lambda *t: bottleneck_adapter(*t, non_linearity=kind), [y, Wd, bd, Wu, bu], "bottleneck_adapter@init")
    Wu_t = Tensor(Wu, requires_grad=True)
    bottleneck_adapter(Tensor(y), Tensor(Wd), Tensor(bd), Wu_t, Tensor(bu), kind).backward(np.ones_like(y))
    assert np.abs(to_numpy(Wu_t.grad)).max() > 1e-3


def test_backward_forms_only_the_products_it_needs():
    """Only W_up trains and y is frozen: one product (dW_up = dout^T a), no dz, no dW_down, no dy."""
    rng = np.random.default_rng(0)
    y, Wd, Wu = rng.standard_normal((6, 8)), rng.standard_normal((3, 8)), rng.standard_normal((8, 3))
    Wu_t = Tensor(Wu, requires_grad=True)
    out = bottleneck_adapter(Tensor(y), Tensor(Wd), None, Wu_t, None, "gelu")
    with record_matmuls() as log:
        out.backward(np.ones_like(y))
    assert log == [((8, 6), (6, 3))]
    Wd_t = Tensor(Wd, requires_grad=True)         # now W_down trains too: dz (via dout W_up) and dz^T y, still no dy
    out = bottleneck_adapter(Tensor(y), Wd_t, None, Tensor(Wu), None, "gelu")
    with record_matmuls() as log:
        out.backward(np.ones_like(y))
    assert log == [((6, 8), (8, 3)), ((3, 6), (6, 8))]


def test_bad_op_inputs_are_named():
    y, Wd, Wu = Tensor(np.zeros((2, 4))), Tensor(np.zeros((3, 4))), Tensor(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non_linearity must be one of"):
        bottleneck_adapter(y, Wd, None, Wu, None, "tanh")
    with pytest.raises(ValueError, match=r"need y \(\.\.\., d\), W_down \(m, d\)"):
        bottleneck_adapter(y, Wd, None, Tensor(np.zeros((3, 4))), None)
    with pytest.raises(TypeError, match="dtype mismatch"):
        bottleneck_adapter(y, Tensor(np.zeros((3, 4), np.float32)), None, Wu, None)


# ---- the layer and the model ----------------------------------------------------------------------
def test_the_layer_computes_the_adapter_on_the_base_layers_output():
    base = Linear(6, 5).to(np.float64)
    layer = BottleneckLayer(base)
    layer.update_layer("default", BottleneckConfig(non_linearity="gelu"), bottleneck_size=2)
    rng = np.random.default_rng(1)
    layer.adapter_up["default"].weight.data = rng.standard_normal((5, 2))
    layer.adapter_up["default"].bias.data = rng.standard_normal(5)
    x = rng.standard_normal((3, 6))
    y = x @ to_numpy(base.weight.data).T + to_numpy(base.bias.data)
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    want = reference(y, *(to_numpy(p.data) for p in (down.weight, down.bias, up.weight, up.bias)), "gelu")
    np.testing.assert_allclose(to_numpy(layer(Tensor(x)).data), want, rtol=1e-12, atol=1e-12)
    layer.disable_adapters = True
    np.testing.assert_array_equal(to_numpy(layer(Tensor(x)).data), y)


@given(d_model=st.sampled_from([4, 8, 12]), n_layer=st.integers(1, 3), d_ff=st.sampled_from([4, 8, 16]),
       layout=st.sampled_from(["houlsby", "pfeiffer"]), size=st.sampled_from(["m", "reduction_factor", "default"]),
       m=st.integers(1, 4), factor=st.sampled_from([1, 2, 3, 4.0]))
def test_trainable_count_is_2dm_plus_d_plus_m_per_adapter(d_model, n_layer, d_ff, layout, size, m, factor):
    """Houlsby: 2 adapters per block (after out_proj and fc2, both width d_model); Pfeiffer: 1 (after fc2)."""
    base = GPT(GPTConfig(vocab_size=16, context_length=8, d_model=d_model, n_layer=n_layer, n_head=2, d_ff=d_ff))
    n_base = sum(p.size for _, p in base_named_parameters(base))
    fields = {"m": {"bottleneck_size": m}, "reduction_factor": {"reduction_factor": factor}, "default": {}}[size]
    config = getattr(BottleneckConfig, layout)(**fields)
    width = {"m": m, "reduction_factor": int(d_model // factor), "default": d_model // 16}[size]
    if width < 1:                                  # d_model // 16 is 0 for these widths: refused, by name
        with pytest.raises(ConfigError, match="reduction_factor=16 gives a bottleneck of 0"):
            get_peft_model(base, config)
        return
    peft = get_peft_model(base, config)
    per_block = 2 if layout == "houlsby" else 1
    want = n_layer * per_block * (2 * d_model * width + d_model + width)
    assert peft.get_nb_trainable_parameters() == (want, n_base + want)


def test_layouts_put_the_adapters_where_the_papers_do():
    houlsby = get_peft_model(build_gpt(0), BottleneckConfig.houlsby(bottleneck_size=2))
    pfeiffer = get_peft_model(build_gpt(0), BottleneckConfig.pfeiffer(bottleneck_size=2))
    wrapped = {name: sorted(p for p, m in model.named_modules() if isinstance(m, BottleneckLayer))
               for name, model in (("houlsby", houlsby), ("pfeiffer", pfeiffer))}
    assert wrapped["houlsby"] == [f"base_model.model.blocks.{i}.{t}" for i in range(2)
                                  for t in ("attn.out_proj", "mlp.fc2")]
    assert wrapped["pfeiffer"] == [f"base_model.model.blocks.{i}.mlp.fc2" for i in range(2)]
    assert houlsby.peft_config["default"].target_modules == SUBLAYER_OUTPUTS["minipeft-gpt"] == ["out_proj", "fc2"]
    assert pfeiffer.peft_config["default"].target_modules == ["fc2"]
    default = BottleneckConfig()
    assert default.target_modules is None and get_peft_model(build_gpt(0), default).peft_config["default"] is default
    assert default.target_modules == ["fc2"]      # the default layout is Pfeiffer's, as AdapterHub's SeqBnConfig


@pytest.mark.parametrize("layout", ["houlsby", "pfeiffer"])
@KINDS
def test_a_fresh_adapter_leaves_the_output_bit_identical(layout, kind):
    """W_up = 0 and b_up = 0: y + f(z) 0^T + 0 is y exactly, in float32 too."""
    ids, _ = batch(0)
    peft = get_peft_model(build_gpt(0), getattr(BottleneckConfig, layout)(bottleneck_size=4, non_linearity=kind))
    np.testing.assert_array_equal(logits(peft, ids), logits(build_gpt(0), ids))


def test_merging_is_refused_and_the_error_says_why():
    peft = get_peft_model(build_gpt(0), BottleneckConfig.houlsby(bottleneck_size=2))
    for call in (peft.merge_and_unload, peft.merge_adapter):
        with pytest.raises(TypeError, match="BOTTLENECK adapters cannot be merged.*a nonlinearity f sits between"):
            call()
    layer = peft.get_base_model().blocks[0].mlp.fc2
    with pytest.raises(TypeError, match="no single weight matrix"):
        layer.merge()
    assert not peft.base_model.merged


def test_the_adapter_file_has_the_expected_keys_and_round_trips_bit_exactly(tmp_path):
    ids, _ = batch(5)
    peft = get_peft_model(build_gpt(0), BottleneckConfig.houlsby(bottleneck_size=3, non_linearity="gelu"))
    rng = np.random.default_rng(7)
    for p in peft.base_model.adapter_parameters("default").values():
        p.data = rng.normal(0, 0.3, p.shape).astype(p.dtype)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    arrays = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = "base_model.model.blocks.0.attn.out_proj"
    assert arrays[f"{key}.adapter_down.weight"].shape == (3, 16) and arrays[f"{key}.adapter_down.bias"].shape == (3,)
    assert arrays[f"{key}.adapter_up.weight"].shape == (16, 3) and arrays[f"{key}.adapter_up.bias"].shape == (16,)
    assert len(arrays) == 2 * 2 * 4      # 2 blocks x 2 places x (down, up) x (weight, bias)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["target_modules"] == ["out_proj", "fc2"]
    assert saved["non_linearity"] == "gelu" and saved["bottleneck_size"] == 3
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    other = build_gpt(1)                           # another base of the same shapes
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(other, str(tmp_path))


def test_training_moves_the_adapter_from_identity_and_lowers_the_loss():
    ids, tgt = batch(6)
    peft = get_peft_model(build_gpt(0), BottleneckConfig.houlsby(bottleneck_size=4))
    opt = AdamW(peft.parameters(trainable_only=True), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        _, loss = peft(ids, tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    up = peft.get_base_model().blocks[1].mlp.fc2.adapter_up["default"].weight
    assert np.abs(to_numpy(up.data)).max() > 0      # the zero-initialised projection learned


# ---- bad configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, match", [
    ({"bottleneck_size": 0}, "bottleneck_size must be an int >= 1"),
    ({"bottleneck_size": -2}, "bottleneck_size must be an int >= 1"),
    ({"bottleneck_size": 2.5}, "bottleneck_size must be an int >= 1"),
    ({"bottleneck_size": True}, "bottleneck_size must be an int >= 1"),
    ({"reduction_factor": 0}, "reduction_factor must be a number >= 1"),
    ({"reduction_factor": 0.5}, "reduction_factor must be a number >= 1"),
    ({"reduction_factor": float("nan")}, "reduction_factor must be a number >= 1"),
    ({"bottleneck_size": 4, "reduction_factor": 8}, "both set the adapter's width; set one of them"),
    ({"non_linearity": "tanh"}, "non_linearity must be 'gelu' or 'relu', got 'tanh'"),
    ({"target_modules": []}, "target_modules must be a non-empty list"),
    ({"layers_to_transform": [-1]}, "layers_to_transform must be None, a block index"),
    ({"output_adapter": False}, "output_adapter must be True when mh_adapter is False and target_modules is None"),
    ({"mh_adapter": 1}, "mh_adapter must be True or False"),
])
def test_bad_configs_raise_a_named_config_error(fields, match):
    with pytest.raises(ConfigError, match=match):
        BottleneckConfig(**fields)


@pytest.mark.parametrize("fields, match", [
    ({"bottleneck_size": 17}, r"bottleneck_size=17 is wider than the output of 'blocks.0.mlp.fc2' \(width 16\)"),
    ({"reduction_factor": 17}, r"reduction_factor=17 gives a bottleneck of 0 for 'blocks.0.mlp.fc2'"),
])
def test_a_width_that_does_not_fit_the_model_is_refused_before_anything_is_wrapped(fields, match):
    base = build_gpt(0)
    with pytest.raises(ConfigError, match=match):
        get_peft_model(base, BottleneckConfig(**fields))
    assert not any(isinstance(m, BottleneckLayer) for _, m in base.named_modules())
    get_peft_model(base, BottleneckConfig(bottleneck_size=16))     # the base is untouched and still usable


def test_a_wider_layer_takes_a_wider_bottleneck_from_the_reduction_factor():
    """fc1's output is d_ff = 32 wide, out_proj's d_model = 16: reduction_factor 8 gives m = 4 and m = 2."""
    peft = get_peft_model(build_gpt(0), BottleneckConfig(reduction_factor=8, target_modules=["fc1", "out_proj"]))
    model = peft.get_base_model()
    assert model.blocks[0].mlp.fc1.adapter_down["default"].weight.shape == (4, 32)
    assert model.blocks[0].attn.out_proj.adapter_down["default"].weight.shape == (2, 16)


def test_the_config_round_trips_through_its_dict():
    config = BottleneckConfig.houlsby(reduction_factor=4, non_linearity="gelu", layers_to_transform=1)
    assert config.layers_to_transform == [1]
    assert BottleneckConfig.from_dict(json.loads(config.to_json())) == config
