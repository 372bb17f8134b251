"""QLoRA: the 4-bit Linear, quantize_model, LoRA on a 4-bit base, merging, files, and the tuner contract on it.

Tolerances: "equal" is bit-equal where both sides run the same float operations in the same order (the
QLoRA op against LoRA's on the dequantized weight, Linear4bit against Linear); gradient checks are float64
central differences (tests/grad_check.py); merged vs unmerged in float64 is within 1e-10 (rounding of a
few sums of ~20 terms of size ~1, ~1e-15 each, with orders of magnitude of margin).
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest
import test_tuner_contract as contract
from grad_check import grad_check
from lora_helpers import batch, build_gpt, build_llama, logits, seeded, snapshot, train_steps

import minipeft
from minipeft import Tensor, backend, fast_ops, no_grad, to_numpy
from minipeft.nn import Linear, Parameter
from minipeft.ops import record_matmuls
from minipeft.peft import LoraConfig, LoraLinear, get_peft_model
from minipeft.peft.tuners.lora import LoraLinear4bit, qlora_linear
from minipeft.quant import (
    BitsAndBytesConfig,
    Linear4bit,
    dequantize_model,
    linear4bit,
    max_half_gap,
    qlora_config,
    quantization_error,
    quantize_model,
    quantized_layers,
)
from minipeft.workshop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minipeft.workshop.quant_io import load_quantized, save_quantized

LINEARS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def quantized_gpt(seed: int = 0, dtype=np.float32, **overrides):
    """The seed-`seed` test GPT with every block Linear in NF4 + double quantization, computing in `dtype`."""
    return quantize_model(build_gpt(seed, dtype=dtype, **overrides),
                          qlora_config(bnb_4bit_compute_dtype=np.dtype(dtype).name, nested_blocksize=2))


def quantized_llama(seed: int = 0, dtype=np.float32, **overrides):
    """The tiny random Llama with every projection of its layers in NF4 + double quantization, computing in `dtype`."""
    return quantize_model(build_llama(seed, dtype=dtype, **overrides),
                          qlora_config(bnb_4bit_compute_dtype=np.dtype(dtype).name, nested_blocksize=2))


def layer_pair(d_out=8, d_in=16, dtype=np.float64, bias=True, seed=0):
    """(Linear4bit, the float Linear holding exactly its dequantized weight and the same bias)."""
    with seeded(seed):
        lin = Linear(d_in, d_out, bias=bias).to(dtype)
        if bias:
            lin.bias.data = backend.rng().standard_normal(d_out).astype(dtype)
    q = Linear4bit.from_linear(lin, blocksize=16, nested_blocksize=2)
    f = q.to_linear()
    if bias:   # to_linear() shares the bias Parameter; give the pair separate ones so their gradients stay apart
        f.bias = Parameter(q.bias.data.copy())
    return q, f


# ---- Linear4bit -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear4bit_equals_a_linear_on_its_dequantized_weight(dtype):
    q, f = layer_pair(dtype=dtype)
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(dtype)
    xs = [Tensor(x.copy(), requires_grad=True) for _ in range(2)]
    outs = [q(xs[0]), f(xs[1])]
    np.testing.assert_array_equal(to_numpy(outs[0]), to_numpy(outs[1]))
    dout = np.random.default_rng(1).standard_normal(outs[0].shape).astype(dtype)
    for o in outs:
        o.backward(dout)
    np.testing.assert_array_equal(to_numpy(xs[0].grad), to_numpy(xs[1].grad))


def test_the_4bit_weight_gets_no_gradient_and_no_weight_product():
    q, _ = layer_pair(dtype=np.float32)
    x = Tensor(np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32), requires_grad=True)
    out = q(x)
    with record_matmuls() as log:
        out.backward(np.ones(out.shape, np.float32))
    assert log == [((5, 8), (8, 16))]                       # dx = dy W only: no (8, 5) @ (5, 16) for dW
    assert all(p.grad is None for p in (q.weight, q.absmax, q.nested_absmax, q.offset))
    assert q.bias.grad is not None                          # a float bias trains like any Linear's


def test_linear4bit_grad_check_x_and_bias(float64):
    q, _ = layer_pair()
    state = q.quant_state()
    rng = np.random.default_rng(2)
    grad_check(lambda x, b: linear4bit(x, b, state), [rng.standard_normal((3, 16)), rng.standard_normal(8)],
               "linear4bit")


def test_quantized_arrays_refuse_training_and_keep_their_codes():
    q, _ = layer_pair(dtype=np.float32)
    with pytest.raises(TypeError, match="cannot train"):
        q.weight.requires_grad = True
    with pytest.raises(TypeError, match="corrupt"):
        q.weight.data = q.weight.data.astype(np.float32)
    with pytest.raises(TypeError, match="cannot train"):
        q.unfreeze()
    codes = to_numpy(q.weight.data).copy()
    w32 = to_numpy(q.dequantize())
    q.to(np.float64)                                        # scales become float64, the codes stay uint8
    assert q.weight.dtype == np.uint8 and q.absmax.dtype == np.uint8 and q.compute_dtype == np.float64
    np.testing.assert_array_equal(to_numpy(q.weight.data), codes)
    np.testing.assert_allclose(to_numpy(q.dequantize()), w32, rtol=2 * np.finfo(np.float32).eps)


def test_linear4bit_bad_inputs_raise():
    q, _ = layer_pair(dtype=np.float32)
    with pytest.raises(ValueError, match="do not fit a quantized weight"):
        q(Tensor(np.zeros((2, 15), np.float32)))
    with pytest.raises(TypeError, match="dtype mismatch"):
        q(Tensor(np.zeros((2, 16), np.float64)))
    with pytest.raises(TypeError, match="takes a float Linear"):
        Linear4bit.from_linear(q)


# ---- quantize_model -----------------------------------------------------------------------------------------------
def test_quantize_model_replaces_every_block_linear_and_keeps_embeddings_float():
    model = quantized_gpt()
    paths = sorted(quantized_layers(model))
    assert paths == sorted(f"blocks.{i}.{'attn' if n.endswith('proj') else 'mlp'}.{n}"
                           for i in range(2) for n in LINEARS)
    assert model.wte.weight.dtype == np.float32 and model.blocks[0].ln_1.weight.dtype == np.float32
    assert isinstance(model.quantization_config, BitsAndBytesConfig)
    untied = quantize_model(build_gpt(0, tie_embeddings=False))
    assert type(untied.lm_head) is Linear                  # transformers' default skip: the LM head stays float
    kept = quantize_model(build_gpt(0), BitsAndBytesConfig(llm_int8_skip_modules=["fc1", "fc2"]))
    assert type(kept.blocks[0].mlp.fc1) is Linear and isinstance(kept.blocks[0].attn.q_proj, Linear4bit)


def test_quantize_model_checks_every_layer_before_replacing_any():
    model = build_gpt(0)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q_proj has 256 weights .* blocksize 96"):
        quantize_model(model, BitsAndBytesConfig(blocksize=96))
    assert not quantized_layers(model)
    peft = get_peft_model(build_gpt(0), LoraConfig())
    with pytest.raises(ValueError, match="already holds adapter layers"):
        quantize_model(peft.get_base_model())


def test_quantizing_again_with_another_format_is_refused_and_changes_nothing():
    model = quantize_model(build_gpt(0), BitsAndBytesConfig(blocksize=64))
    first = model.quantization_config
    before = {p: to_numpy(m.absmax.data).copy() for p, m in quantized_layers(model).items()}
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q_proj is already in 4 bits with blocksize=64, but the "
                                         r"config asks for blocksize=32.*dequantize_model\(model\) first"):
        quantize_model(model, BitsAndBytesConfig(blocksize=32))
    assert model.quantization_config is first
    assert all(m.blocksize == 64 and np.array_equal(to_numpy(m.absmax.data), before[p])
               for p, m in quantized_layers(model).items())
    with pytest.raises(ValueError, match="double_quant=False, but the config asks for double_quant=True"):
        quantize_model(model, qlora_config())
    assert quantize_model(model, BitsAndBytesConfig(blocksize=64)) is model     # the same format: nothing to do
    requantized = quantize_model(dequantize_model(model), BitsAndBytesConfig(blocksize=32))
    assert {m.blocksize for m in quantized_layers(requantized).values()} == {32}
    assert requantized.quantization_config.blocksize == 32


def test_quantizing_a_float64_model_casts_to_the_compute_dtype_and_leaves_the_original_linear(float64):
    """A float64 model quantized with float32 compute (QLoRA's default here): each Linear4bit computes in float32,
    its bias is the float64 bias rounded to float32, and the float64 Linear it replaced is not modified."""
    model = build_gpt(0, dtype=np.float64)
    q_proj = model.blocks[0].attn.q_proj
    w_before, b_before = to_numpy(q_proj.weight.data).copy(), to_numpy(q_proj.bias.data).copy()
    quantize_model(model, qlora_config())
    layer = model.blocks[0].attn.q_proj
    assert isinstance(layer, Linear4bit) and layer.compute_dtype == np.float32
    assert layer.dequantize().dtype == np.float32
    np.testing.assert_array_equal(to_numpy(layer.bias.data), b_before.astype(np.float32))
    assert q_proj.weight.dtype == np.float64 and np.array_equal(to_numpy(q_proj.weight.data), w_before)
    assert np.array_equal(to_numpy(q_proj.bias.data), b_before)
    assert quantization_error(model, build_gpt(0, dtype=np.float64))["max_abs"] > 0


def test_quantization_error_needs_a_quantized_model():
    with pytest.raises(ValueError, match="holds no Linear4bit layer; quantize_model"):
        quantization_error(build_gpt(0), build_gpt(0))


def test_quantized_model_error_is_within_the_nf4_bound_and_logits_stay_close():
    ref, model = build_gpt(0), quantized_gpt()
    err = quantization_error(model, ref)
    absmax = max(float(np.abs(to_numpy(m.weight.data)).max()) for _, m in ref.named_modules()
                 if type(m) is Linear)
    assert 0 < err["max_abs"] <= (max_half_gap() + 1e-3) * absmax   # 1e-3: double quantization's scale error
    assert 0 < err["relative_rms"] < 0.15                          # ~0.09 measured for N(0, 0.02^2) weights
    ids, _ = batch(0)
    assert 0 < np.abs(logits(model, ids) - logits(ref, ids)).max() < 0.05


def test_dequantize_model_gives_float_linears_with_the_dequantized_weights():
    model = quantized_gpt()
    w = to_numpy(model.blocks[1].mlp.fc2.dequantize())
    ids, _ = batch(1)
    before = logits(model, ids)
    dequantize_model(model)
    assert not quantized_layers(model) and type(model.blocks[1].mlp.fc2) is Linear
    np.testing.assert_array_equal(to_numpy(model.blocks[1].mlp.fc2.weight.data), w)
    np.testing.assert_array_equal(logits(model, ids), before)


# ---- QLoRA: LoRA on the 4-bit base ----------------------------------------------------------------------------------
def lora_pair(dtype=np.float64, dropout=0.0):
    """(LoraLinear4bit on a Linear4bit, LoraLinear on the float Linear of its dequantized weight), same A and B."""
    q, f = layer_pair(dtype=dtype)
    ql, fl = LoraLinear4bit(q), LoraLinear(f)
    for layer in (ql, fl):
        with seeded(3):
            layer.update_layer("default", LoraConfig(r=3, lora_alpha=6, lora_dropout=dropout, init_lora_weights=False))
    return ql, fl


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_qlora_equals_lora_on_the_dequantized_weight(fast):
    ql, fl = lora_pair()
    x = np.random.default_rng(0).standard_normal((2, 4, 16))
    dout = np.random.default_rng(1).standard_normal((2, 4, 8))
    results = []
    with fast_ops(fast):
        for layer in (ql, fl):
            xt = Tensor(x.copy(), requires_grad=True)
            out = layer(xt)
            out.backward(dout)
            results.append([to_numpy(out), to_numpy(xt.grad), to_numpy(layer.lora_A["default"].weight.grad),
                            to_numpy(layer.lora_B["default"].weight.grad), to_numpy(layer.base_layer.bias.grad)])
    for got, want, what in zip(*results, ["y", "dx", "dA", "dB", "db"], strict=True):
        np.testing.assert_array_equal(got, want, err_msg=what)   # the same products in the same order


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_qlora_grad_check_x_a_b_and_bias(fast, float64):
    q, _ = layer_pair()
    state = q.quant_state()
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((3, 16)), rng.standard_normal((2, 16)), rng.standard_normal((8, 2)),
              rng.standard_normal(8)]
    with fast_ops(fast):
        grad_check(lambda x, A, B, b: qlora_linear(x, state, b, A, B, 1.5), inputs, f"qlora_linear fast={fast}")


def test_qlora_with_dropout_reaches_the_adapter_only():
    ql, _ = lora_pair(dropout=0.5)
    x = Tensor(np.ones((4, 16)), requires_grad=True)
    with seeded(0):
        y_train = to_numpy(ql(x))
    ql.eval()
    y_eval = to_numpy(ql(x))
    ql.disable_adapters = True
    base = to_numpy(ql(x))
    assert np.abs(y_train - y_eval).max() > 1e-6                 # dropout changed what the adapter saw
    assert np.abs(y_eval - base).max() > 1e-6
    np.testing.assert_array_equal(base, to_numpy(ql.base_layer(x)))


def test_merge_is_exact_in_float_and_unmerge_restores_the_4bit_layer():
    ql, _ = lora_pair()
    q = ql.base_layer
    arrays = [to_numpy(p.data).copy() for p in (q.weight, q.absmax, q.nested_absmax, q.offset)]
    x = Tensor(np.random.default_rng(5).standard_normal((3, 16)))
    with no_grad():
        unmerged = to_numpy(ql(x))
        base = to_numpy(q(x))
        ql.merge()
        assert type(ql.base_layer) is Linear and ql.merged
        merged = to_numpy(ql(x))
        with pytest.raises(RuntimeError, match="already merged"):
            ql.merge("default")
        ql.unmerge()
    np.testing.assert_allclose(merged, unmerged, rtol=1e-10, atol=1e-10)
    assert np.abs(merged - base).max() > 1e-3
    assert ql.base_layer is q and not ql.merged
    for p, a in zip((q.weight, q.absmax, q.nested_absmax, q.offset), arrays, strict=True):
        np.testing.assert_array_equal(to_numpy(p.data), a)
    with pytest.raises(KeyError, match="no adapter named"):
        ql.merge("nope")
    assert ql.base_layer is q                                     # a refused merge changed nothing


def test_merge_and_unload_then_requantize_loses_at_most_the_nf4_bound():
    """merge_and_unload() is exact (float Linears at the adapted places); quantize_model() on the result
    re-quantizes them, each weight within max_half_gap * block absmax (+ the scale's 8-bit error)."""
    peft = get_peft_model(quantized_gpt(), LoraConfig(r=2, target_modules=["q_proj", "fc1"], init_lora_weights=False))
    ids, _ = batch(6)
    out = logits(peft, ids)
    merged = peft.merge_and_unload()
    assert type(merged.blocks[0].attn.q_proj) is Linear and isinstance(merged.blocks[0].attn.k_proj, Linear4bit)
    np.testing.assert_allclose(logits(merged, ids), out, rtol=1e-5, atol=1e-5)   # float32 merge: rounding only
    w = to_numpy(merged.blocks[0].attn.q_proj.weight.data).copy()
    quantize_model(merged, qlora_config(nested_blocksize=2))
    w_hat = to_numpy(merged.blocks[0].attn.q_proj.dequantize())
    block_absmax = np.repeat(np.abs(w.reshape(-1, 64)).max(axis=1), 64).reshape(w.shape)
    err = np.abs(w - w_hat)
    assert 0 < err.max() and np.all(err <= max_half_gap() * block_absmax + 2e-3 * block_absmax.max())
    assert np.abs(logits(merged, ids) - out).max() > 0             # the re-quantization is measurably lossy


def test_all_params_count_the_values_a_4bit_weight_encodes():
    float_peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=LINEARS))
    q_peft = get_peft_model(quantized_gpt(), LoraConfig(r=2, target_modules=LINEARS))
    assert q_peft.get_nb_trainable_parameters() == float_peft.get_nb_trainable_parameters()
    trainable = sum(2 * (m.in_features + m.out_features) for _, m in q_peft.get_base_model().named_modules()
                    if isinstance(m, Linear4bit))
    assert q_peft.get_nb_trainable_parameters()[0] == trainable == 2 * 2 * (4 * 32 + 48 + 48)
    assert re.search(r"all params: [\d,]+ \|\| trainable%", q_peft.print_trainable_parameters())


def test_qlora_training_moves_only_the_adapters_and_the_4bit_base_stays_bit_identical():
    peft = get_peft_model(quantized_gpt(), LoraConfig(r=4, lora_alpha=8, target_modules=LINEARS))
    base = snapshot(peft.get_base_model(), skip="lora_")
    ids, tgt = batch(7)
    losses = train_steps(peft, ids, tgt, steps=5)
    assert losses[-1] < losses[0]
    after = snapshot(peft.get_base_model(), skip="lora_")
    assert base.keys() == after.keys() and all(np.array_equal(base[k], after[k]) for k in base)


# ---- files ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("double_quant", [False, True])
def test_save_load_quantized_is_bit_exact(tmp_path, double_quant):
    model = quantize_model(build_gpt(0), BitsAndBytesConfig(bnb_4bit_use_double_quant=double_quant))
    path = save_quantized(model, tmp_path / "q.safetensors")
    loaded = load_quantized(path)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(to_numpy(got[k]), to_numpy(want[k]), err_msg=k)
    assert loaded.quantization_config == model.quantization_config
    ids, _ = batch(8)
    np.testing.assert_array_equal(logits(loaded, ids), logits(model, ids))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors"]      # no temp file left


def test_a_file_with_the_earlier_uniform_int8_scales_is_refused_with_the_fix(tmp_path):
    model = quantized_gpt()
    for layer in quantized_layers(model).values():    # the earlier format: int8 codes of a uniform grid
        layer.absmax._data = layer.absmax.data.astype(np.int8)
    save_quantized(model, tmp_path / "old.safetensors")
    with pytest.raises(CheckpointError, match=r"holds double-quantized scales as int8.*quantize_model"):
        load_quantized(tmp_path / "old.safetensors")


def test_quantized_files_are_told_apart_from_float_checkpoints(tmp_path):
    save_quantized(quantized_gpt(), tmp_path / "q.safetensors")
    save_checkpoint(build_gpt(0), tmp_path / "f.safetensors")
    with pytest.raises(CheckpointError, match="load_quantized"):
        load_checkpoint(tmp_path / "q.safetensors")
    with pytest.raises(CheckpointError, match="float checkpoint"):
        load_quantized(tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="no Linear4bit"):
        save_quantized(build_gpt(0), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="save_quantized"):
        save_checkpoint(quantized_gpt(), tmp_path / "x.safetensors")
    data = bytearray((tmp_path / "q.safetensors").read_bytes())
    data[-3] ^= 0xFF                                               # a flipped byte in the last tensor
    (tmp_path / "q.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256|checksum"):
        load_quantized(tmp_path / "q.safetensors")


# ---- the tuner contract, on a 4-bit base ------------------------------------------------------------------------
# Every check of tests/test_tuner_contract.py that takes a method, run for LoRA on each family with the contract's
# base model replaced by its quantized version. The count check is replaced by test_all_params_count_the_values_...:
# its "all params" is the base's element count, and a 4-bit base holds two weights per element (counted as such).
CONTRACT = {name: fn for name, fn in vars(contract).items() if name.startswith("test_") and callable(fn)
            and "method" in inspect.signature(fn).parameters
            and name != "test_inject_trains_exactly_the_closed_form_count_and_nothing_of_the_base"}
QUANTIZED = {"gpt": quantized_gpt, "llama": quantized_llama}


def _first_value(fn, arg: str):
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize" and mark.args[0] == arg:
            return mark.args[1][0]
    raise AssertionError(f"contract test {fn.__name__} takes {arg!r}, which test_qlora.py cannot supply")


@pytest.mark.parametrize("family", sorted(QUANTIZED))
@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_holds_for_lora_on_a_quantized_base(name, family, monkeypatch, tmp_path):
    quantized = dataclasses.replace(contract.FAMILIES[family], build=QUANTIZED[family])
    monkeypatch.setitem(contract.FAMILIES, family, quantized)
    fn = CONTRACT[name]
    given = {"family": family, "method": "LORA", "tmp_path": tmp_path}
    args = {a: given[a] if a in given else _first_value(fn, a) for a in inspect.signature(fn).parameters}
    with seeded(4321):
        fn(**args)


# ---- the strict device: a QLoRA step reads back what any step does, and copies nothing ---------------------------
def test_a_qlora_training_step_moves_nothing_to_the_host():
    import test_strict  # noqa: PLC0415 (its step-budget helpers)

    prev = minipeft.get_device()
    with backend.fork_rng():
        minipeft.set_device("strict")
        try:
            xp = backend.xp()
            with seeded(0):
                model = get_peft_model(quantized_gpt(n_layer=2), LoraConfig(r=4, target_modules=LINEARS))
            rng = np.random.default_rng(0)
            x, y = rng.integers(0, 64, (2, 8)), rng.integers(0, 64, (2, 8))
            y[:, :3] = -100
            with no_grad():
                model(xp.asarray(x))      # the first dequantization uploads the code books (NF4, dynamic map), once
            reads, to_host, to_device = test_strict._step_reads(model, xp.asarray(x), xp.asarray(y))
            assert to_host == 0 and to_device == 0
            assert {k: v for k, v in reads.items() if v} == test_strict.STEP_READS
        finally:
            minipeft.set_device(prev)
