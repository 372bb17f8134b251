"""Sparse fine-tuning: the op's gradients, the sparse diff's exact round trip, the scores and the global top p%,
that nothing outside the chosen entries moves under AdamW with weight decay, the files, storage and errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from grad_check import grad_check
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import batch, build_gpt, logits, seeded, snapshot
from safetensors.numpy import load_file, save_file
from test_strict import (
    STEP_READS,
    _step_reads,
    xp,  # noqa: F401 (the strict-device fixture)
)

import minipeft
from minipeft import Tensor, backend, to_numpy
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import AdapterError, ConfigError, PeftModel, get_peft_model
from minipeft.peft.storage import adapter_file_bytes, adapter_tensor_bytes
from minipeft.peft.tuners.selective import bitfit_config, embeddings_config
from minipeft.peft.tuners.sparse import (
    SparseConfig,
    apply_sparse_diff,
    entry_count,
    gradient_scores,
    remove_sparse_diff,
    select_sparse_entries,
    sparse_replace,
    top_entries,
)
from minipeft.peft.tuners.sparse.score import candidate_parameters

WD = 0.1   # a large weight decay, so an entry the optimizer touched by mistake would visibly shrink


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(11):
        yield


def chosen(percent: float = 5.0, score: str = "fisher", **kw) -> SparseConfig:
    """A config with its entries chosen on the seed-0 test GPT from two batches."""
    return select_sparse_entries(build_gpt(0), SparseConfig(percent=percent, score=score, **kw), [batch(0), batch(1)])


def adamw_steps(model, steps: int, lr: float = 1e-2) -> AdamW:
    opt = AdamW(model.parameters(trainable_only=True), lr=lr, weight_decay=WD)
    for s in range(steps):
        ids, tgt = batch(10 + s)
        opt.zero_grad()
        _, loss = model(ids, tgt)
        loss.backward()
        opt.step()
    return opt


# ---- the op ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,idx", [((5,), [0, 3]), ((3, 4), [1, 2, 7, 11]), ((2, 3), [0, 1, 2, 3, 4, 5])])
def test_sparse_replace_gradients_match_central_differences(shape, idx):
    rng = np.random.default_rng(0)
    W0, values = rng.normal(size=shape), rng.normal(size=len(idx))
    M = rng.normal(size=shape)   # a non-linear readout, so every entry of W' matters differently
    grad_check(lambda w, v: (sparse_replace(w, v, np.array(idx)) * Tensor(M)).tanh(), [W0, values],
               f"sparse_replace {shape}")


def test_the_values_gradient_is_the_weight_gradient_gathered_at_the_indices():
    rng = np.random.default_rng(1)
    W0 = Tensor(rng.normal(size=(4, 6)).astype(np.float32), requires_grad=True)
    values = Tensor(rng.normal(size=3).astype(np.float32), requires_grad=True)
    idx = np.array([2, 9, 17], np.int32)
    dout = rng.normal(size=(4, 6)).astype(np.float32)
    sparse_replace(W0, values, idx).backward(dout)
    np.testing.assert_array_equal(to_numpy(values.grad), dout.reshape(-1)[idx])
    np.testing.assert_array_equal(to_numpy(W0.grad).reshape(-1)[idx], 0)       # those entries no longer reach out
    mask = np.ones(24, bool)
    mask[idx] = False
    np.testing.assert_array_equal(to_numpy(W0.grad).reshape(-1)[mask], dout.reshape(-1)[mask])


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), data=st.data())
def test_a_sparse_diff_applies_and_is_removed_exactly(shape, data):
    n = int(np.prod(shape))
    idx = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))), np.int32)
    rng = np.random.default_rng(n)
    original = rng.normal(size=shape).astype(np.float32)
    values = rng.normal(size=idx.size).astype(np.float32)
    W = backend.asarray(original.copy())
    overwritten = apply_sparse_diff(W, backend.asarray(idx), backend.asarray(values))
    applied = to_numpy(W).reshape(-1)
    np.testing.assert_array_equal(applied[idx], values)
    outside = np.setdiff1d(np.arange(n), idx)
    np.testing.assert_array_equal(applied[outside], original.reshape(-1)[outside])
    remove_sparse_diff(W, backend.asarray(idx), overwritten)
    np.testing.assert_array_equal(to_numpy(W), original)


# ---- counts, scores and the choice -------------------------------------------------------------------------
@given(percent=st.floats(1e-3, 100, exclude_min=False), n=st.integers(1, 10**7))
def test_the_entry_count_is_percent_of_n_rounded_and_at_least_one(percent, n):
    k = entry_count(percent, n)
    assert 1 <= k <= n and (k == 1 or abs(k - percent * n / 100) <= 0.5)
    assert entry_count(100, n) == n


@given(percent=st.floats(0.05, 100))
def test_trainable_count_is_the_top_percent_of_every_candidate_entry(percent):
    base = build_gpt(0)
    n = base.num_parameters()
    peft = get_peft_model(base, select_sparse_entries(base, SparseConfig(percent=percent), [batch(0)]))
    assert peft.get_nb_trainable_parameters() == (entry_count(percent, n), n + entry_count(percent, n))


def test_the_choice_is_the_global_top_k_of_the_scores():
    rng = np.random.default_rng(2)
    scores = {"a": rng.random((3, 4)), "b": rng.random(5), "c": np.zeros(6)}
    picked = top_entries(scores, percent=40)                  # 40% of 23 entries: 9
    flat = np.concatenate([scores[n].reshape(-1) for n in scores])
    got = np.concatenate([picked[n] + off for n, off in (("a", 0), ("b", 12)) if n in picked])
    assert sum(v.size for v in picked.values()) == 9 and "c" not in picked
    assert set(got) == set(np.argsort(-flat, kind="stable")[:9])
    assert all(v.dtype == np.int32 and np.all(np.diff(v) > 0) for v in picked.values())


@pytest.mark.parametrize("score,reduce", [("fisher", lambda g: g * g), ("magnitude", np.abs)])
def test_scores_are_the_mean_over_batches_of_the_squared_or_absolute_gradient(score, reduce):
    model = build_gpt(0)
    params = candidate_parameters(model, SparseConfig(target_modules=["fc1", "wte"]))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = snapshot(model)
    got = gradient_scores(model, params, [batch(0), batch(1)], score)
    want = {n: 0.0 for n in params}
    for b in (0, 1):                                          # by hand: one backward per batch, everything trainable
        ref = build_gpt(0)
        _, loss = ref(*batch(b))
        loss.backward()
        grads = dict(ref.named_parameters())
        want = {n: want[n] + reduce(to_numpy(grads[n].grad)) for n in params}
    for n in params:
        np.testing.assert_allclose(to_numpy(got[n]), want[n] / 2, rtol=1e-6, atol=1e-12)  # float32: summation order
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(np.array_equal(v, snapshot(model)[k]) for k, v in before.items())


# ---- training moves only the chosen entries ----------------------------------------------------------------
def test_nothing_outside_the_chosen_entries_moves_after_many_adamw_steps_with_weight_decay():
    config = chosen(percent=5)
    base = build_gpt(0)
    before = snapshot(base)
    peft = get_peft_model(base, config)
    opt = adamw_steps(peft, steps=25)
    values = peft.base_model.adapter_parameters("default")
    assert {id(p) for p in opt.state} == {id(p) for p in values.values()}      # state for the k values only
    assert sum(st["m"].size for st in opt.state.values()) == config.total_entries
    merged = snapshot(peft.merge_and_unload())
    moved = 0
    for name, value in merged.items():
        idx = config.selection.get(name, np.zeros(0, np.int32))
        outside = np.setdiff1d(np.arange(value.size), idx)
        assert np.array_equal(value.reshape(-1)[outside], before[name].reshape(-1)[outside]), name
        moved += int((value.reshape(-1)[idx] != before[name].reshape(-1)[idx]).sum())
    assert moved > 0.9 * config.total_entries                  # the chosen entries did train


def test_the_values_train_on_exactly_the_full_weight_gradient_at_their_entries():
    # a sparse model and the plain model holding the same weights: the values' gradient is the plain
    # model's weight gradient (the lookup's and the tied head's summed) gathered at the indices, bit for bit
    config = chosen(percent=20)
    peft = get_peft_model(build_gpt(0), config)
    adamw_steps(peft, steps=3)                                 # values that differ from the base's entries
    plain = get_peft_model(build_gpt(0), config)
    for k, p in plain.base_model.adapter_parameters("default").items():
        p.data = dict(peft.base_model.named_parameters())[k].data.copy()
    plain = plain.merge_and_unload()
    plain.unfreeze()
    ids, tgt = batch(5)
    peft.zero_grad()
    for m in (peft, plain):
        _, loss = m(ids, tgt)
        loss.backward()
    full = dict(plain.named_parameters())
    for live, p in peft.base_model.adapter_parameters("default").items():
        path, slot = live.replace("model.", "", 1).rsplit(".sparse_", 1)
        pname = slot.split(".")[0]
        np.testing.assert_array_equal(to_numpy(p.grad), to_numpy(full[f"{path}.{pname}"].grad).reshape(-1)[
            config.selection[f"{path}.{pname}"]])


def test_merged_equals_unmerged_and_unmerge_restores_the_base_exactly():
    ids, _ = batch(3)
    base = build_gpt(0)
    before = snapshot(base)
    peft = get_peft_model(base, chosen(percent=10))
    adamw_steps(peft, steps=5)
    out = logits(peft, ids)
    peft.merge_adapter()
    np.testing.assert_array_equal(logits(peft, ids), out)
    peft.unmerge_adapter()
    after = snapshot(peft.get_base_model(), skip="sparse_")
    assert all(np.array_equal(before[k.replace(".base_layer", "")], v) for k, v in after.items())


@pytest.mark.parametrize("method", ["sparse", "bitfit", "embeddings"])
def test_a_training_step_moves_nothing_to_the_host_and_reads_what_full_training_reads(xp, method):  # noqa: F811
    # as tests/test_strict.py checks for full fine-tuning and LoRA: no read back per layer or per tensor
    with backend.fork_rng():
        minipeft.manual_seed(0)
        model = GPT(GPTConfig.from_preset("test", n_layer=2))
    rng = np.random.default_rng(0)
    x, y = xp.asarray(rng.integers(0, 64, (2, 8))), xp.asarray(rng.integers(0, 64, (2, 8)))
    config = {"sparse": lambda: select_sparse_entries(model, SparseConfig(percent=5), [(x, y)]),
              "bitfit": bitfit_config, "embeddings": embeddings_config}[method]()
    reads, to_host, to_device = _step_reads(get_peft_model(model, config), x, y)
    assert to_host == 0 and to_device == 0
    assert {k: v for k, v in reads.items() if v} == STEP_READS


# ---- files and storage --------------------------------------------------------------------------------------
def test_the_adapter_file_is_the_sparse_diff_and_round_trips_bit_exactly(tmp_path):
    ids, _ = batch(2)
    config = chosen(percent=5)
    peft = get_peft_model(build_gpt(0), config)
    adamw_steps(peft, steps=5)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    arrays = load_file(str(tmp_path / "adapter_model.safetensors"))
    for key, idx in config.selection.items():
        path, pname = key.rsplit(".", 1)
        np.testing.assert_array_equal(arrays[f"base_model.model.{path}.sparse_{pname}_indices"], idx)
        assert arrays[f"base_model.model.{path}.sparse_{pname}"].shape == idx.shape
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(build_gpt(1), str(tmp_path))


@pytest.mark.parametrize("edit,match", [(lambda a: a[::-1].copy(), "strictly increasing"),
                                        (lambda a: a + 10**6, r"inside \[0, "),
                                        (lambda a: a[:-1].copy(), "has shape")])
def test_a_file_with_bad_indices_is_refused_by_name(tmp_path, edit, match):
    config = chosen(percent=5)
    get_peft_model(build_gpt(0), config).save_pretrained(str(tmp_path))
    path = str(tmp_path / "adapter_model.safetensors")
    arrays = load_file(path)
    key = next(k for k, a in arrays.items() if k.endswith("_indices") and a.size > 1)
    arrays[key] = edit(arrays[key])
    save_file(arrays, path)                                    # no checksum: read unchecked, then the indices checked
    with pytest.raises(AdapterError, match=match):
        PeftModel.from_pretrained(build_gpt(0), str(tmp_path))


def test_edited_entries_in_adapter_config_are_refused(tmp_path):
    get_peft_model(build_gpt(0), chosen(percent=5)).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    key = next(iter(saved["entries"]))
    saved["entries"][key] += 1
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    with pytest.raises(AdapterError, match="entries add up to"):
        PeftModel.from_pretrained(build_gpt(0), str(tmp_path))


def test_storage_is_values_plus_int32_indices():
    config = chosen(percent=5)
    peft = get_peft_model(build_gpt(0), config)
    predicted, measured = adapter_tensor_bytes(peft), adapter_file_bytes(peft)
    assert predicted == config.total_entries * (4 + 4)         # float32 value + int32 index per entry
    assert predicted < measured < predicted + 16384            # plus the header and adapter_config.json


# ---- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [0, -1, 100.5, float("nan"), "5", True])
def test_percent_outside_0_100_raises_naming_it(percent):
    want = f"SparseConfig.percent must be a number in (0, 100], got {percent!r}"
    with pytest.raises(ConfigError, match=re.escape(want)):
        SparseConfig(percent=percent)


def test_other_bad_configs_raise_clearly():
    with pytest.raises(ConfigError, match="SparseConfig.score must be one of"):
        SparseConfig(score="l2")
    with pytest.raises(ConfigError, match="SparseConfig selects nothing"):
        SparseConfig(trainable_types=[])
    with pytest.raises(ValueError, match="has no chosen entries; choose them from a few batches first"):
        get_peft_model(build_gpt(0), SparseConfig(percent=5))
    peft = get_peft_model(build_gpt(0), chosen())
    with pytest.raises(TypeError, match="score the base model itself, before get_peft_model"):
        select_sparse_entries(peft, SparseConfig(), [batch(0)])
    with pytest.raises(ValueError, match="batches is empty"):
        select_sparse_entries(build_gpt(0), SparseConfig(), [])
