"""The tuner contract, checked for every registered PEFT method on both model families, the "test" GPT and a tiny
random Llama (grouped-query attention, RMSNorm, SwiGLU, no biases): inject, count, differ, save/load, fingerprint,
merge (or a clear refusal), and adapter management. Each method declares its case (a config for the family's test
model and the closed-form trainable count) in its own folder, when it registers; a method registered without a case
for each family fails the suite, by name."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from lora_helpers import batch, build_gpt, build_llama, logits, seeded, snapshot, train_steps

from minipeft import backend, no_grad
from minipeft.peft import (
    PEFT_TYPE_TO_TUNER,
    AdapterError,
    BaseTunerLayer,
    PeftModel,
    fingerprint,
    get_peft_model,
)
from minipeft.peft.registry import PEFT_TYPE_TO_CONTRACT
from minipeft.peft.save_load import base_named_parameters

if "EXAMPLE_PARALLEL" not in PEFT_TYPE_TO_TUNER:   # the package holds it only where test_new_method put its folder
    import example_method  # noqa: F401 (registers EXAMPLE_PARALLEL, a non-mergeable method from outside the package)


@dataclass
class Family:
    build: Callable[..., object]             # (seed, dtype=) -> a fresh base model, the same weights per seed
    norm_params: tuple[str, ...]             # two 1-D norm parameters of layer 1 (the fingerprint must cover them)


FAMILIES = {
    "gpt": Family(build_gpt, ("blocks.1.ln_1.weight", "blocks.1.ln_2.bias")),
    "llama": Family(build_llama, ("model.layers.1.input_layernorm.weight",
                                  "model.layers.1.post_attention_layernorm.weight")),
}
METHODS = sorted(PEFT_TYPE_TO_TUNER)
# every test below runs once per (family, method)
each = pytest.mark.parametrize("family, method", [(f, m) for f in FAMILIES for m in METHODS])


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(4321):
        yield


def build(family: str, seed: int = 0, dtype=np.float32):
    return FAMILIES[family].build(seed, dtype=dtype)


def case(family: str, method: str):
    """The method's own contract case for the family (declared in its folder, given to register_peft_method)."""
    return PEFT_TYPE_TO_CONTRACT[method][family]


def config(family: str, method: str):
    return case(family, method).config(build(family), [batch(0)])


def make(family: str, method: str, seed: int = 0, dtype=np.float32):
    """The family's seed-`seed` test model (of dtype) with one adapter of `method`; (base fingerprint, peft model)."""
    base = build(family, seed, dtype=dtype)
    return fingerprint(base), get_peft_model(base, config(family, method))


def randomize_adapter(peft, name: str = "default", seed: int = 0) -> None:
    """Every weight adapter `name` owns set to N(0, 0.3^2): non-zero, so the method must change the output."""
    rng = np.random.default_rng(seed)
    for p in peft.base_model.adapter_parameters(name).values():
        p.data = backend.asarray(rng.normal(0, 0.3, p.shape), dtype=p.dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_registered_method_declares_a_case(family):
    missing = [m for m in METHODS if family not in PEFT_TYPE_TO_CONTRACT[m]]
    assert not missing, (f"registered methods without a {family!r} contract case: {missing}; pass "
                         f"contract={{{family!r}: ContractCase(...)}} to register_peft_method")


@pytest.mark.parametrize("method", METHODS)
def test_every_layer_keeps_the_one_update_layer_and_merge_of_the_base(method):
    """One contract: every method's layer adds an adapter through the base's update_layer(adapter_name, config,
    **per_module) and merges through the base's merge()/unmerge(); it writes only create_adapter and the merge
    hooks, so the name check, the first adapter's activation and the merge bookkeeping exist once."""
    for cls in PEFT_TYPE_TO_TUNER[method].layer_classes:
        for shared in ("update_layer", "merge", "unmerge", "delete_adapter"):
            assert getattr(cls, shared) is getattr(BaseTunerLayer, shared), f"{cls.__name__} overrides {shared}()"
        assert list(inspect.signature(cls.create_adapter).parameters)[:3] == ["self", "adapter_name", "config"]


@each
def test_inject_trains_exactly_the_closed_form_count_and_nothing_of_the_base(family, method):
    base = build(family)
    want = case(family, method).trainable(base)
    base_params = {id(p) for _, p in base.named_parameters()}
    peft = get_peft_model(base, config(family, method))
    trainable, total = peft.get_nb_trainable_parameters()
    assert trainable == want > 0
    assert total == sum(p.size for _, p in base_named_parameters(base)) + want
    assert not any(p.requires_grad for p in peft.parameters() if id(p) in base_params)
    prefix = PEFT_TYPE_TO_TUNER[method].prefix
    assert all(prefix in n for n, p in peft.named_parameters() if p.requires_grad)


@each
def test_forward_differs_from_the_base_once_the_weights_are_non_zero(family, method):
    ids, _ = batch(0)
    _, peft = make(family, method)
    ref = logits(build(family), ids)
    randomize_adapter(peft)
    assert np.abs(logits(peft, ids) - ref).max() > 1e-3
    with peft.disable_adapter():
        np.testing.assert_array_equal(logits(peft, ids), ref)


@each
def test_training_moves_only_the_adapter(family, method):
    ids, tgt = batch(1)
    _, peft = make(family, method)
    before = snapshot(peft.get_base_model(), skip=PEFT_TYPE_TO_TUNER[method].prefix)
    adapter_before = {k: p.data.copy() for k, p in peft.base_model.adapter_parameters("default").items()}
    losses = train_steps(peft, ids, tgt, steps=3)
    assert losses[-1] < losses[0]
    after = snapshot(peft.get_base_model(), skip=PEFT_TYPE_TO_TUNER[method].prefix)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    moved = [k for k, p in peft.base_model.adapter_parameters("default").items()
             if not np.array_equal(backend.to_numpy(p.data), backend.to_numpy(adapter_before[k]))]
    assert moved, "training changed none of the adapter's weights"


@each
def test_save_load_round_trip_is_bit_exact(family, method, tmp_path):
    ids, _ = batch(2)
    _, peft = make(family, method)
    randomize_adapter(peft, seed=1)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(build(family), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    want = {k: p.data for k, p in peft.base_model.adapter_parameters("default").items()}
    got = {k: p.data for k, p in loaded.base_model.adapter_parameters("default").items()}
    assert want.keys() == got.keys()
    assert all(np.array_equal(backend.to_numpy(want[k]), backend.to_numpy(got[k])) for k in want)
    assert loaded.get_nb_trainable_parameters()[0] == 0


@each
def test_fingerprint_covers_every_base_parameter_and_no_adapter_weight(family, method):
    fp, peft = make(family, method)
    assert fingerprint(peft.get_base_model()) == fp == peft.base_fingerprint
    randomize_adapter(peft, seed=2)
    assert fingerprint(peft.get_base_model()) == fp
    other = build(family)
    with no_grad():   # a 1-D parameter: once left out of the fingerprint
        dict(other.named_parameters())[FAMILIES[family].norm_params[0]].data[0] += 1e-3
    assert fingerprint(other) != fp


@each
def test_merge_equals_unmerged_or_is_refused_clearly(family, method):
    ids, _ = batch(3)
    _, peft = make(family, method, dtype=np.float64)
    randomize_adapter(peft, seed=3)
    base_out, out = logits(build(family, dtype=np.float64), ids), logits(peft, ids)
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
    assert type(plain) is type(build(family))
    np.testing.assert_allclose(logits(plain, ids), out, rtol=1e-10, atol=1e-10)


@each
def test_add_set_delete_enable_disable_adapters(family, method):
    ids, _ = batch(4)
    _, peft = make(family, method)
    randomize_adapter(peft, seed=4)
    first = logits(peft, ids)
    peft.add_adapter("second", config(family, method))
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
    np.testing.assert_array_equal(logits(peft, ids), logits(build(family), ids))
    peft.enable_adapter_layers()
    np.testing.assert_array_equal(logits(peft, ids), second)
    peft.delete_adapter("second")
    assert peft.active_adapter == "default" and list(peft.peft_config) == ["default"]
    assert not any(".second." in n + "." for n, _ in peft.named_parameters())
    np.testing.assert_array_equal(logits(peft, ids), first)
    base = peft.unload()
    np.testing.assert_array_equal(logits(base, ids), logits(build(family), ids))


@each
def test_a_second_peft_model_on_a_wrapped_base_is_refused(family, method):
    _, peft = make(family, method)
    with pytest.raises(ValueError, match="already holds adapter layers"):
        get_peft_model(peft.get_base_model(), config(family, method), adapter_name="second")


@each
@pytest.mark.parametrize("which", [0, 1])
def test_an_adapter_refuses_a_base_that_differs_only_in_a_norm(family, method, which, tmp_path):
    _, peft = make(family, method)
    peft.save_pretrained(str(tmp_path))
    other = build(family)
    with no_grad():
        dict(other.named_parameters())[FAMILIES[family].norm_params[which]].data[0] += 1e-3
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(other, str(tmp_path))
    PeftModel.from_pretrained(build(family), str(tmp_path))   # the same base still loads


@each
def test_after_unload_the_peft_model_refuses_adapter_work_naming_what_happened(family, method, tmp_path):
    # merge_and_unload() changes the base's weights: an adapter added afterwards would carry the old fingerprint
    _, peft = make(family, method)
    unloaded_by = "merge_and_unload()" if PEFT_TYPE_TO_TUNER[method].mergeable else "unload()"
    plain = getattr(peft, unloaded_by[:-2])()
    assert not any(isinstance(m, BaseTunerLayer) for _, m in plain.named_modules())
    assert peft.peft_config == {} and peft.active_adapter is None
    calls = {"add_adapter()": lambda: peft.add_adapter("second", config(family, method)),
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
    again = get_peft_model(plain, config(family, method))      # the way forward: fingerprinted as it is now
    assert again.base_fingerprint == fingerprint(plain)


@each
def test_saving_after_the_last_adapter_was_deleted_raises(family, method, tmp_path):
    _, peft = make(family, method)
    peft.delete_adapter("default")
    with pytest.raises(AdapterError, match="holds no adapter"):
        peft.save_pretrained(str(tmp_path))
    assert os.listdir(tmp_path) == []
    peft.add_adapter("fresh", config(family, method))          # still usable: add one and save it
    peft.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "fresh")) == ["adapter_config.json", "adapter_model.safetensors"]
