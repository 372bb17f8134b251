"""Spec of (IA)^3 (Liu et al., 2022): learned vectors rescale a Linear's output (keys, values) or its input (fc2,
whose input is the MLP's inner activation), as Hugging Face PEFT's IA3 does.

Proves both forms of the op and every gradient against float64 central differences, that a frozen base costs
no weight-gradient product, the closed-form count over random shapes and target sets, that ones at init leave
the output bit-identical, that merging agrees with the unmerged layer within the float rounding bound (and
differs from the base) while unmerging restores the weights bit for bit, Hugging Face's names, shapes and
config fields, and that bad configs are named.
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
from strategies import away_from_zero

from minipeft import Tensor, backend, to_numpy
from minipeft.nn import GPT, GPTConfig, Linear
from minipeft.ops import record_matmuls
from minipeft.peft import AdapterError, ConfigError, IA3Config, PeftModel, get_peft_model
from minipeft.peft.save_load import base_named_parameters
from minipeft.peft.tuners.ia3 import IA3Linear, ia3_linear

LINEARS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(2022):
        yield


@st.composite
def ia3_problem(draw, max_side: int = 4):
    """(x, W, b, l, scale_input) in float64: x (*batch, k), W (d, k), b (d,) or None, l (1, k) or (d, 1)."""
    k, d = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    batch_shape = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    scale_input = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = rng.standard_normal(d) if draw(st.booleans()) else None
    l = rng.standard_normal((1, k) if scale_input else (d, 1))
    return rng.standard_normal((*batch_shape, k)), rng.standard_normal((d, k)), b, l, scale_input


def reference(x, W, b, l, scale_input):
    """The two equations in plain NumPy."""
    bias = 0 if b is None else b
    return (x * l[0]) @ W.T + bias if scale_input else (x @ W.T + bias) * l[:, 0]


@given(ia3_problem())
def test_forward_matches_the_equation(problem):
    x, W, b, l, scale_input = problem
    y = ia3_linear(Tensor(x), Tensor(W), None if b is None else Tensor(b), Tensor(l), scale_input)
    assert y.shape == (*x.shape[:-1], W.shape[0])
    np.testing.assert_allclose(to_numpy(y.data), reference(*problem), rtol=1e-12, atol=1e-12)


@given(ia3_problem())
def test_grad_check_every_input(problem):
    """Central differences (float64) for x, W, b and l at once (W and b trainable here, to check their formulas)."""
    x, W, b, l, scale_input = problem
    name = f"ia3_linear[{'input' if scale_input else 'output'}]"
    if b is None:
        grad_check(lambda x_, W_, l_: ia3_linear(x_, W_, None, l_, scale_input), [x, W, l], name)
    else:
        grad_check(lambda *t: ia3_linear(*t, scale_input=scale_input), [x, W, b, l], name)


@pytest.mark.parametrize("scale_input, products", [
    (False, []),                                 # dl = sum_rows(dy * h): elementwise, no product at all
    (True, [((6, 5), (5, 8))]),                  # dl = sum_rows((dy W) * x): the one product dl needs
])
def test_a_frozen_base_costs_no_weight_gradient_product(scale_input, products):
    """Only l trains (the input comes from frozen layers): neither dW (d x k) nor dx is formed."""
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((6, 8)), rng.standard_normal((5, 8)), rng.standard_normal(5)
    l = Tensor(rng.standard_normal((1, 8) if scale_input else (5, 1)), requires_grad=True)
    y = ia3_linear(Tensor(x), Tensor(W), Tensor(b), l, scale_input)
    with record_matmuls() as log:
        y.backward(np.ones((6, 5)))
    assert log == products and l.grad.shape == l.shape


def test_bad_op_inputs_are_named():
    x, W = Tensor(np.zeros((2, 4))), Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"l \(1, k\) to scale the layer's input, here \(1, 4\)"):
        ia3_linear(x, W, None, Tensor(np.ones((3, 1))), scale_input=True)
    with pytest.raises(ValueError, match=r"l \(d, 1\) to scale the layer's output, here \(3, 1\)"):
        ia3_linear(x, W, None, Tensor(np.ones(3)))
    with pytest.raises(TypeError, match="dtype mismatch"):
        ia3_linear(x, W, None, Tensor(np.ones((3, 1), np.float32)))


# ---- merging --------------------------------------------------------------------------------------
def merge_bound(x, W, b, l, scale_input, dtype) -> np.ndarray:
    """Elementwise bound on |merged - unmerged| for one IA3Linear, x (N, k).

    As for LoRA (lora_helpers.merge_bound; Higham, "Accuracy and Stability", 3.1): a length-k dot product is
    within gamma_k |x|.|w| of exact, gamma_n = n u / (1 - n u), u = eps / 2, whatever the summation order.
    Output scaling: unmerged rounds x W^T (k), + b, * l; merged rounds W * l, b * l, x W'^T (k), + b'. Input
    scaling: unmerged rounds x * l, x W^T (k), + b; merged rounds W * l, x W'^T (k), + b. Either path is within
    gamma_{k+3} M of the exact value, M = |l| (|x| |W|^T + |b|) or (|x| |l|) |W|^T + |b|, so they differ by at
    most 2 gamma_{k+3} M ~= (k + 3) eps M; 1.1x covers the 1/(1 - n u) factor.
    """
    k = W.shape[1]
    eps = float(np.finfo(dtype).eps)
    ax, aW, al = (np.abs(np.asarray(a, dtype=np.float64)) for a in (x, W, l))
    ab = 0 if b is None else np.abs(np.asarray(b, dtype=np.float64))
    M = (ax * al) @ aW.T + ab if scale_input else (ax @ aW.T + ab) * al[:, 0]
    return 1.1 * (k + 3) * eps * M


@given(k=st.integers(1, 40), d=st.integers(1, 12), n=st.integers(1, 6), scale_input=st.booleans(),
       bias=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_merged_equals_unmerged_within_rounding_and_unmerge_restores_bit_for_bit(k, d, n, scale_input, bias, dtype,
                                                                                 seed):
    rng = np.random.default_rng(seed)
    base = Linear(k, d, bias=bias)
    base.weight.data = rng.standard_normal((d, k)).astype(dtype)
    if bias:
        base.bias.data = rng.standard_normal(d).astype(dtype)
    layer = IA3Linear(base)
    layer.update_layer("default", IA3Config(), is_feedforward=scale_input)
    l = (1 + away_from_zero(rng.standard_normal(layer.ia3_l["default"].shape))).astype(dtype)  # |l - 1| >= 0.5
    layer.ia3_l["default"].data = l
    x = rng.standard_normal((n, k)).astype(dtype)
    W0, b0 = to_numpy(base.weight.data).copy(), None if not bias else to_numpy(base.bias.data).copy()
    plain = x @ W0.T + (0 if b0 is None else b0)
    unmerged = to_numpy(layer(Tensor(x)).data)
    layer.merge()
    merged = to_numpy(layer(Tensor(x)).data)
    assert np.all(np.abs(merged - unmerged) <= merge_bound(x, W0, b0, l, scale_input, dtype))
    assert np.abs(merged - plain).max() > 1e-3        # the fold did something: not a no-op passing as equal
    layer.unmerge()
    np.testing.assert_array_equal(to_numpy(base.weight.data), W0)
    if bias:
        np.testing.assert_array_equal(to_numpy(base.bias.data), b0)
    np.testing.assert_array_equal(to_numpy(layer(Tensor(x)).data), unmerged)


def test_unmerge_is_exact_even_where_a_scale_is_zero():
    """Dividing by l (Hugging Face's unmerge) could not bring back a row that l = 0 erased; the kept copy does."""
    base = Linear(4, 3).to(np.float32)
    base.bias.data = backend.asarray(np.array([0.5, -1.0, 2.0], np.float32))
    W0, b0 = to_numpy(base.weight.data).copy(), to_numpy(base.bias.data).copy()
    layer = IA3Linear(base)
    layer.update_layer("default", IA3Config(), is_feedforward=False)
    layer.ia3_l["default"].data = backend.asarray(np.array([[0.0], [3.0], [1e-30]], np.float32))
    layer.merge()
    assert np.all(to_numpy(base.weight.data)[0] == 0) and to_numpy(base.bias.data)[0] == 0
    layer.unmerge()
    np.testing.assert_array_equal(to_numpy(base.weight.data), W0)
    np.testing.assert_array_equal(to_numpy(base.bias.data), b0)
    assert not layer.merged
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        layer.unmerge()


def test_merge_and_unload_scales_rows_and_bias_of_k_v_and_the_columns_of_fc2():
    ids, _ = batch(0)
    base = build_gpt(0)
    W = {n: to_numpy(p.data).copy() for n, p in base.named_parameters()}
    peft = get_peft_model(base, IA3Config(init_ia3_weights=False))
    l = {n: to_numpy(p.data) for n, p in peft.base_model.adapter_parameters("default").items()}
    out = logits(peft, ids)
    plain = peft.merge_and_unload()
    got = dict(plain.named_parameters())
    lk, lf = l["model.blocks.1.attn.k_proj.ia3_l.default"], l["model.blocks.1.mlp.fc2.ia3_l.default"]
    assert lk.shape == (16, 1) and lf.shape == (1, 32)
    def now(name):
        return to_numpy(got[f"blocks.1.{name}"].data)

    np.testing.assert_array_equal(now("attn.k_proj.weight"), W["blocks.1.attn.k_proj.weight"] * lk)     # rows
    np.testing.assert_array_equal(now("attn.k_proj.bias"), W["blocks.1.attn.k_proj.bias"] * lk[:, 0])
    np.testing.assert_array_equal(now("mlp.fc2.weight"), W["blocks.1.mlp.fc2.weight"] * lf)             # columns
    np.testing.assert_array_equal(now("mlp.fc2.bias"), W["blocks.1.mlp.fc2.bias"])                      # untouched
    np.testing.assert_array_equal(now("attn.q_proj.weight"), W["blocks.1.attn.q_proj.weight"])         # no target
    # float32 through two blocks: each merged layer is within (k + 3) eps |M| of the unmerged one (merge_bound);
    # layer norm and attention carry that relative error through, so 1e-5 relative (~80 eps) holds with room
    np.testing.assert_allclose(logits(plain, ids), out, rtol=1e-5, atol=1e-5)
    assert np.abs(out - logits(build_gpt(0), ids)).max() > 1e-3


# ---- counts, init, names, files -------------------------------------------------------------------
@given(d_model=st.sampled_from([4, 8]), n_layer=st.integers(1, 3), d_ff=st.sampled_from([4, 12]),
       targets=st.lists(st.sampled_from(LINEARS), min_size=1, max_size=6, unique=True), data=st.data())
def test_trainable_count_is_out_features_or_in_features_per_target(d_model, n_layer, d_ff, targets, data):
    """A feedforward target scales its input (in_features numbers), any other its output (out_features)."""
    ff = data.draw(st.lists(st.sampled_from(targets), unique=True), label="feedforward_modules")
    base = GPT(GPTConfig(vocab_size=16, context_length=8, d_model=d_model, n_layer=n_layer, n_head=2, d_ff=d_ff))
    n_base = sum(p.size for _, p in base_named_parameters(base))
    width = {"q_proj": (d_model, d_model), "k_proj": (d_model, d_model), "v_proj": (d_model, d_model),
             "out_proj": (d_model, d_model), "fc1": (d_model, d_ff), "fc2": (d_ff, d_model)}   # (in, out)
    want = n_layer * sum(width[t][0] if t in ff else width[t][1] for t in targets)
    peft = get_peft_model(base, IA3Config(target_modules=targets, feedforward_modules=ff))
    assert peft.get_nb_trainable_parameters() == (want, n_base + want)


def _filled(config):
    """The config after get_peft_model on the test GPT filled what it left None."""
    get_peft_model(build_gpt(0), config)
    return config.target_modules, config.feedforward_modules


def test_the_papers_default_is_keys_values_and_the_mlp_activation_filled_in_at_injection():
    config = IA3Config()
    assert config.target_modules is None and config.feedforward_modules is None   # as HF: the model decides
    peft = get_peft_model(build_gpt(0), config)
    assert config.target_modules == ["k_proj", "v_proj", "fc2"] and config.feedforward_modules == ["fc2"]
    assert peft.get_nb_trainable_parameters()[0] == 2 * (16 + 16 + 32)   # (IA)^3: d_k + d_v + d_ff per block
    assert _filled(IA3Config(target_modules=["q_proj", "fc2"])) == (["q_proj", "fc2"], ["fc2"])
    assert _filled(IA3Config(target_modules=["q_proj", "fc1"])) == (["q_proj", "fc1"], [])
    assert _filled(IA3Config(feedforward_modules=[])) == (["k_proj", "v_proj", "fc2"], [])
    regex = IA3Config(target_modules=r".*\.(k_proj|fc2)")
    layers = get_peft_model(build_gpt(0), regex).get_base_model().blocks[0]
    assert regex.feedforward_modules == r"(.*\.)?(fc2)"
    assert layers.mlp.fc2.is_feedforward["default"] and not layers.attn.k_proj.is_feedforward["default"]


def test_a_feedforward_module_outside_the_default_targets_is_refused_at_injection():
    with pytest.raises(ConfigError, match=r"feedforward_modules \['fc1'\] must be a subset of target_modules"):
        get_peft_model(build_gpt(0), IA3Config(feedforward_modules=["fc1"]))


def test_ones_at_init_leave_the_output_bit_identical():
    ids, _ = batch(1)
    peft = get_peft_model(build_gpt(0), IA3Config(target_modules=LINEARS, feedforward_modules=["fc1", "fc2"]))
    np.testing.assert_array_equal(logits(peft, ids), logits(build_gpt(0), ids))
    assert all(np.all(to_numpy(p.data) == 1) for p in peft.base_model.adapter_parameters("default").values())


def test_init_ia3_weights_false_draws_normal_vectors_that_change_the_output():
    ids, _ = batch(2)
    peft = get_peft_model(build_gpt(0), IA3Config(init_ia3_weights=False))
    values = np.concatenate([to_numpy(p.data).ravel() for p in peft.base_model.adapter_parameters("default").values()])
    assert 0.5 < values.std() < 1.5 and abs(values.mean()) < 0.3       # N(0, 1), 128 draws
    assert np.abs(logits(peft, ids) - logits(build_gpt(0), ids)).max() > 1e-3


def test_the_adapter_file_uses_hugging_faces_names_and_shapes_and_round_trips(tmp_path):
    ids, _ = batch(3)
    peft = get_peft_model(build_gpt(0), IA3Config(init_ia3_weights=False))
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    arrays = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(arrays) == sorted(f"base_model.model.blocks.{i}.{m}.ia3_l" for i in range(2)
                                    for m in ("attn.k_proj", "attn.v_proj", "mlp.fc2"))
    assert arrays["base_model.model.blocks.0.attn.v_proj.ia3_l"].shape == (16, 1)
    assert arrays["base_model.model.blocks.0.mlp.fc2.ia3_l"].shape == (1, 32)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IA3" and saved["feedforward_modules"] == ["fc2"] and saved["fan_in_fan_out"] is False
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(build_gpt(1), str(tmp_path))


def test_a_hugging_face_ia3_config_loads():
    """adapter_config.json as Hugging Face PEFT writes it for IA3 (its sets saved as lists)."""
    hf = {"auto_mapping": None, "base_model_name_or_path": "minipeft-test", "exclude_modules": None,
          "fan_in_fan_out": False, "feedforward_modules": ["fc2"], "inference_mode": True, "init_ia3_weights": True,
          "layers_pattern": None, "layers_to_transform": None, "modules_to_save": None, "peft_type": "IA3",
          "revision": None, "target_modules": ["v_proj", "fc2", "k_proj"], "task_type": "CAUSAL_LM"}
    config = IA3Config.from_dict(hf)
    assert config.target_modules == ["v_proj", "fc2", "k_proj"] and config.inference_mode is True
    with pytest.raises(ConfigError, match="exclude_modules=\\['q_proj'\\], a Hugging Face PEFT option"):
        IA3Config.from_dict({**hf, "exclude_modules": ["q_proj"]})


# ---- bad configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, match", [
    ({"target_modules": ["k_proj"], "feedforward_modules": ["fc2"]}, r"\['fc2'\] are not targets"),
    ({"feedforward_modules": "("}, "feedforward_modules '\\(' is not a valid regex"),
    ({"feedforward_modules": 3}, "feedforward_modules must be None, a list of module names, or one regex"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out must be False"),
    ({"init_ia3_weights": "yes"}, "init_ia3_weights must be True or False"),
    ({"target_modules": []}, "target_modules must be a non-empty list"),
])
def test_bad_configs_raise_a_named_config_error(fields, match):
    with pytest.raises(ConfigError, match=match):
        IA3Config(**fields)


def test_a_feedforward_name_no_target_has_is_refused_before_anything_is_wrapped():
    """With a regex target the subset cannot be checked from names alone: get_peft_model checks the modules."""
    base = build_gpt(0)
    with pytest.raises(ConfigError, match=r"feedforward_modules \['fc_2'\] name no module that target_modules="):
        get_peft_model(base, IA3Config(target_modules="all-linear", feedforward_modules=["fc_2"]))
    assert not any(isinstance(m, IA3Linear) for _, m in base.named_modules())
