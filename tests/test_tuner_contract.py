"""The tuner contract, checked for every registered PEFT method: inject, count, differ, save/load, fingerprint,
merge (or a clear refusal), and adapter management. A method registered without a case here fails the suite."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import example_method  # noqa: F401 (registers EXAMPLE_PARALLEL, a non-mergeable method written outside the package)
import numpy as np
import pytest
from lora_helpers import batch, build_gpt, logits, seeded, snapshot, train_steps

from minipeft import backend, no_grad
from minipeft.nn import Linear
from minipeft.peft import (
    PEFT_TYPE_TO_TUNER,
    AdapterError,
    BaseTunerLayer,
    BottleneckConfig,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    fingerprint,
    get_peft_model,
)
from minipeft.peft.save_load import base_named_parameters
from minipeft.peft.tuners.selective import SelectiveConfig
from minipeft.peft.tuners.sparse import SparseConfig, select_sparse_entries


@dataclass
class Case:
    config: Callable[[], object]             # a config of this method for the "test" GPT
    trainable: Callable[[object], int]       # the closed-form trainable count, from the base model's shapes


def _linears(model, names):
    return [m for p, m in model.named_modules() if isinstance(m, Linear) and p.rsplit(".", 1)[-1] in names]


CASES = {
    # LoRA: r (in + out) per adapted matrix, here with a rank_pattern so per-layer ranks are counted too
    "LORA": Case(lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "fc1"],
                                    rank_pattern={"blocks.1.mlp.fc1": 3}),
                 lambda base: sum((3 if m is base.blocks[1].mlp.fc1 else 2) * (m.in_features + m.out_features)
                                  for m in _linears(base, {"q_proj", "v_proj", "fc1"}))),
    # bottleneck adapters, Houlsby layout: 2 d m + d + m per adapter, d the output width of the Linear it follows
    "BOTTLENECK": Case(lambda: BottleneckConfig.houlsby(bottleneck_size=3, non_linearity="gelu"),
                       lambda base: sum(2 * m.out_features * 3 + m.out_features + 3
                                        for m in _linears(base, {"out_proj", "fc2"}))),
    # (IA)^3: one number per output of k_proj and v_proj, one per input of fc2 (the MLP's inner activation)
    "IA3": Case(lambda: IA3Config(target_modules=["k_proj", "v_proj", "fc2"], feedforward_modules=["fc2"]),
                lambda base: sum(m.out_features for m in _linears(base, {"k_proj", "v_proj"}))
                + sum(m.in_features for m in _linears(base, {"fc2"}))),
    # prompt tuning: n virtual tokens of d_model each; prefix tuning: a key and a value of d_model per layer per token
    "PROMPT_TUNING": Case(lambda: PromptTuningConfig(num_virtual_tokens=3), lambda base: 3 * base.config.d_model),
    "PREFIX_TUNING": Case(lambda: PrefixTuningConfig(num_virtual_tokens=2),
                          lambda base: 2 * 2 * base.config.n_layer * base.config.d_model),
    # selective: a trained copy of every LayerNorm's scale and shift, of fc1 (weight and bias) and of the embedding
    # table, which the tied head also reads: the sum of those tensors' sizes
    "SELECTIVE": Case(lambda: SelectiveConfig(trainable_types=["norm"], target_modules=["fc1", "wte"]),
                      lambda base: sum(p.size for n, p in base.named_parameters()
                                       if ".ln_" in n or n.startswith(("ln_f.", "wte.")) or ".fc1." in n)),
    # sparse: the top 10% of all the base's entries by Fisher score on one batch, round(0.1 N)
    "SPARSE": Case(lambda: select_sparse_entries(build_gpt(0), SparseConfig(percent=10), [batch(0)]),
                   lambda base: round(10 * base.num_parameters() / 100)),
    # the parallel adapter: m (in + out) per targeted Linear
    "EXAMPLE_PARALLEL": Case(lambda: example_method.ParallelAdapterConfig(bottleneck=3, target_modules=["fc2"]),
                             lambda base: sum(3 * (m.in_features + m.out_features) for m in _linears(base, {"fc2"}))),
}
METHODS = sorted(PEFT_TYPE_TO_TUNER)


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(4321):
        yield


def make(method: str, seed: int = 0, dtype=np.float32):
    """The seed-`seed` test GPT (of dtype) with one adapter of `method`; returns (base fingerprint, peft model)."""
    base = build_gpt(seed, dtype=dtype)
    return fingerprint(base), get_peft_model(base, CASES[method].config())


def randomize_adapter(peft, name: str = "default", seed: int = 0) -> None:
    """Every weight adapter `name` owns set to N(0, 0.3^2): non-zero, so the method must change the output."""
    rng = np.random.default_rng(seed)
    for p in peft.base_model.adapter_parameters(name).values():
        p.data = backend.asarray(rng.normal(0, 0.3, p.shape), dtype=p.dtype)


def test_every_registered_method_has_a_case():
    assert set(METHODS) == set(CASES), f"registered methods without a contract case: {set(METHODS) - set(CASES)}"


@pytest.mark.parametrize("method", METHODS)
def test_inject_trains_exactly_the_closed_form_count_and_nothing_of_the_base(method):
    base = build_gpt(0)
    want = CASES[method].trainable(base)
    base_params = {id(p) for _, p in base.named_parameters()}
    peft = get_peft_model(base, CASES[method].config())
    trainable, total = peft.get_nb_trainable_parameters()
    assert trainable == want > 0
    assert total == sum(p.size for _, p in base_named_parameters(base)) + want
    assert not any(p.requires_grad for p in peft.parameters() if id(p) in base_params)
    prefix = PEFT_TYPE_TO_TUNER[method].prefix
    assert all(prefix in n for n, p in peft.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", METHODS)
def test_forward_differs_from_the_base_once_the_weights_are_non_zero(method):
    ids, _ = batch(0)
    _, peft = make(method)
    ref = logits(build_gpt(0), ids)
    randomize_adapter(peft)
    assert np.abs(logits(peft, ids) - ref).max() > 1e-3
    with peft.disable_adapter():
        np.testing.assert_array_equal(logits(peft, ids), ref)


@pytest.mark.parametrize("method", METHODS)
def test_training_moves_only_the_adapter(method):
    ids, tgt = batch(1)
    _, peft = make(method)
    before = snapshot(peft.get_base_model(), skip=PEFT_TYPE_TO_TUNER[method].prefix)
    adapter_before = {k: p.data.copy() for k, p in peft.base_model.adapter_parameters("default").items()}
    losses = train_steps(peft, ids, tgt, steps=3)
    assert losses[-1] < losses[0]
    after = snapshot(peft.get_base_model(), skip=PEFT_TYPE_TO_TUNER[method].prefix)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    moved = [k for k, p in peft.base_model.adapter_parameters("default").items()
             if not np.array_equal(backend.to_numpy(p.data), backend.to_numpy(adapter_before[k]))]
    assert moved, "training changed none of the adapter's weights"


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_bit_exact(method, tmp_path):
    ids, _ = batch(2)
    _, peft = make(method)
    randomize_adapter(peft, seed=1)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    want = {k: p.data for k, p in peft.base_model.adapter_parameters("default").items()}
    got = {k: p.data for k, p in loaded.base_model.adapter_parameters("default").items()}
    assert want.keys() == got.keys()
    assert all(np.array_equal(backend.to_numpy(want[k]), backend.to_numpy(got[k])) for k in want)
    assert loaded.get_nb_trainable_parameters()[0] == 0


@pytest.mark.parametrize("method", METHODS)
def test_fingerprint_covers_every_base_parameter_and_no_adapter_weight(method):
    fp, peft = make(method)
    assert fingerprint(peft.get_base_model()) == fp == peft.base_fingerprint
    randomize_adapter(peft, seed=2)
    assert fingerprint(peft.get_base_model()) == fp
    other = build_gpt(0)
    with no_grad():
        other.blocks[0].ln_1.bias.data[0] += 1e-3    # a 1-D parameter: once left out of the fingerprint
    assert fingerprint(other) != fp


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_unmerged_or_is_refused_clearly(method):
    ids, _ = batch(3)
    _, peft = make(method, dtype=np.float64)
    randomize_adapter(peft, seed=3)
    base_out, out = logits(build_gpt(0, dtype=np.float64), ids), logits(peft, ids)
    if not PEFT_TYPE_TO_TUNER[method].mergeable:
        for call in (peft.merge_adapter, peft.merge_and_unload):
            with pytest.raises(TypeError, match=f"{method} adapters cannot be merged"):
                call()
        np.testing.assert_array_equal(logits(peft, ids), out)
        return
    peft.merge_adapter()
    merged = logits(peft, ids)
    np.testing.assert_allclose(merged, out, rtol=1e-10, atol=1e-10)   # float64: only rounding differs
    assert np.abs(merged - base_out).max() > 1e-3
    peft.unmerge_adapter()
    np.testing.assert_allclose(logits(peft, ids), out, rtol=1e-10, atol=1e-10)
    plain = peft.merge_and_unload()
    assert type(plain) is type(build_gpt(0))
    np.testing.assert_allclose(logits(plain, ids), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_add_set_delete_enable_disable_adapters(method):
    ids, _ = batch(4)
    _, peft = make(method)
    randomize_adapter(peft, seed=4)
    first = logits(peft, ids)
    peft.add_adapter("second", CASES[method].config())
    randomize_adapter(peft, "second", seed=5)
    assert peft.active_adapter == "default"
    np.testing.assert_array_equal(logits(peft, ids), first)
    peft.set_adapter("second")
    second = logits(peft, ids)
    assert np.abs(second - first).max() > 1e-3
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    # n + ".": a ParameterDict entry (IA3's ia3_l.second) ends in the adapter name, a ModuleDict's has more after it
    assert trainable and all(".second." in n + "." for n in trainable)
    peft.disable_adapter_layers()
    np.testing.assert_array_equal(logits(peft, ids), logits(build_gpt(0), ids))
    peft.enable_adapter_layers()
    np.testing.assert_array_equal(logits(peft, ids), second)
    peft.delete_adapter("second")
    assert peft.active_adapter == "default" and list(peft.peft_config) == ["default"]
    assert not any(".second." in n + "." for n, _ in peft.named_parameters())
    np.testing.assert_array_equal(logits(peft, ids), first)
    base = peft.unload()
    np.testing.assert_array_equal(logits(base, ids), logits(build_gpt(0), ids))


@pytest.mark.parametrize("method", METHODS)
def test_a_second_peft_model_on_a_wrapped_base_is_refused(method):
    _, peft = make(method)
    with pytest.raises(ValueError, match="already holds adapter layers"):
        get_peft_model(peft.get_base_model(), CASES[method].config(), adapter_name="second")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("param", ["ln_1.weight", "ln_2.bias"])
def test_an_adapter_refuses_a_base_that_differs_only_in_a_layernorm(method, param, tmp_path):
    _, peft = make(method)
    peft.save_pretrained(str(tmp_path))
    other = build_gpt(0)
    with no_grad():
        dict(other.blocks[1].named_parameters())[param].data[0] += 1e-3
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(other, str(tmp_path))
    PeftModel.from_pretrained(build_gpt(0), str(tmp_path))   # the same base still loads


@pytest.mark.parametrize("method", METHODS)
def test_after_unload_the_peft_model_refuses_adapter_work_naming_what_happened(method, tmp_path):
    # merge_and_unload() changes the base's weights: an adapter added afterwards would carry the old fingerprint
    _, peft = make(method)
    unloaded_by = "merge_and_unload()" if PEFT_TYPE_TO_TUNER[method].mergeable else "unload()"
    plain = getattr(peft, unloaded_by[:-2])()
    assert not any(isinstance(m, BaseTunerLayer) for _, m in plain.named_modules())
    assert peft.peft_config == {} and peft.active_adapter is None
    calls = {"add_adapter()": lambda: peft.add_adapter("second", CASES[method].config()),
             "set_adapter()": lambda: peft.set_adapter("default"), "unload()": peft.unload}
    if PEFT_TYPE_TO_TUNER[method].mergeable:
        calls |= {"unmerge_adapter()": peft.unmerge_adapter, "merge_adapter()": peft.merge_adapter}
    for what, call in calls.items():
        with pytest.raises(RuntimeError, match=re.escape(f"{what}: this PeftModel's adapters were removed by "
                                                         f"{unloaded_by}")):
            call()
    with pytest.raises(AdapterError, match=re.escape(f"no adapters left, {unloaded_by} removed them")):
        peft.save_pretrained(str(tmp_path))
    assert os.listdir(tmp_path) == []
    again = get_peft_model(plain, CASES[method].config())      # the way forward: fingerprinted as it is now
    assert again.base_fingerprint == fingerprint(plain)


@pytest.mark.parametrize("method", METHODS)
def test_saving_after_the_last_adapter_was_deleted_raises(method, tmp_path):
    _, peft = make(method)
    peft.delete_adapter("default")
    with pytest.raises(AdapterError, match="holds no adapter"):
        peft.save_pretrained(str(tmp_path))
    assert os.listdir(tmp_path) == []
    peft.add_adapter("fresh", CASES[method].config())          # still usable: add one and save it
    peft.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "fresh")) == ["adapter_config.json", "adapter_model.safetensors"]
