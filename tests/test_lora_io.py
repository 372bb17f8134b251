"""Spec of adapter files: Hugging Face PEFT's layout, bit-exact round trips, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from lora_helpers import batch, build_gpt, logits, seeded, snapshot, train_steps
from safetensors.numpy import load_file

from minipeft.peft import AdapterError, LoraConfig, LoraLinear, PeftModel, get_peft_model

ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@pytest.fixture(autouse=True)
def _own_generator():
    """Adapter init draws from the global generator: seed it here and give it back afterwards."""
    with seeded(1234):
        yield


def trained(seed: int = 0, adapter_name: str = "default", **cfg):
    """A PeftModel on the seed-`seed` base whose adapter took 3 AdamW steps; also its ids and logits."""
    ids, tgt = batch(20)
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **cfg}
    with seeded(100 + seed):  # also when called from the module-scoped fixture, before _own_generator
        peft = get_peft_model(build_gpt(seed), LoraConfig(**cfg), adapter_name=adapter_name)
        train_steps(peft, ids, tgt)
    return peft, ids, logits(peft, ids)


def has_wrappers(model) -> bool:
    return any(isinstance(m, LoraLinear) for _, m in model.named_modules())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One trained adapter saved once; tests copy the folder before damaging it."""
    d = tmp_path_factory.mktemp("adapter")
    peft, ids, out = trained()
    peft.save_pretrained(str(d))
    return d, ids, out


def copy_of(saved_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(saved_dir, d)
    return d


# ---- the format ----------------------------------------------------------------------------------------
def test_files_and_keys_follow_hugging_face_peft(saved):
    d, _, _ = saved
    assert sorted(os.listdir(d)) == [CONFIG, WEIGHTS]
    arrays = load_file(str(d / WEIGHTS))
    want = {f"base_model.model.blocks.{i}.attn.{n}.lora_{ab}.weight" for i in range(2)
            for n in ("q_proj", "v_proj") for ab in "AB"}
    assert set(arrays) == want
    assert arrays["base_model.model.blocks.0.attn.q_proj.lora_A.weight"].shape == (4, 16)
    assert arrays["base_model.model.blocks.0.attn.q_proj.lora_B.weight"].shape == (16, 4)
    cfg = json.loads((d / CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["inference_mode"] is True and len(cfg["base_model_fingerprint"]) == 16


def test_round_trip_is_bit_exact(saved):
    d, ids, out = saved
    loaded = PeftModel.from_pretrained(build_gpt(0), str(d))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    assert loaded.get_nb_trainable_parameters()[0] == 0, "loaded for inference: nothing trains"
    trainable = PeftModel.from_pretrained(build_gpt(0), str(d), is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == 2 * 2 * 4 * (16 + 16)


def test_saving_a_trained_adapter_differs_from_an_untrained_one(saved):
    """The control for the round trip: the saved B is non-zero, so loading it is not the identity."""
    d, ids, out = saved
    assert np.abs(load_file(str(d / WEIGHTS))["base_model.model.blocks.0.attn.q_proj.lora_B.weight"]).max() > 0
    assert np.abs(logits(build_gpt(0), ids) - out).max() > 1e-3


def test_different_base_raises_fingerprint_error_unless_unchecked(saved):
    d, ids, out = saved
    other = build_gpt(1)
    with pytest.raises(AdapterError, match="fingerprint") as e:
        PeftModel.from_pretrained(other, str(d))
    assert str(d) in str(e.value)
    assert not has_wrappers(other)
    forced = PeftModel.from_pretrained(other, str(d), check_base_model=False)
    assert np.abs(logits(forced, ids) - out).max() > 1e-3                     # it did load, onto another base


def test_a_config_without_the_fingerprint_is_checked_against_the_weights_files(saved, tmp_path):
    d = copy_of(saved[0], tmp_path)
    cfg = json.loads((d / CONFIG).read_text())
    del cfg["base_model_fingerprint"]
    (d / CONFIG).write_text(json.dumps(cfg))
    other = build_gpt(1)
    with pytest.raises(AdapterError, match="fingerprint"):
        PeftModel.from_pretrained(other, str(d))
    assert not has_wrappers(other)
    PeftModel.from_pretrained(build_gpt(0), str(d))                           # its own base loads
    PeftModel.from_pretrained(build_gpt(1), str(d), check_base_model=False)   # unchecked, as asked


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weights_holding_nan_or_inf_are_refused_on_load_naming_the_tensor(saved, tmp_path, bad):
    from safetensors.numpy import save_file  # noqa: PLC0415

    d = copy_of(saved[0], tmp_path)
    arrays = load_file(str(d / WEIGHTS))
    key = "base_model.model.blocks.1.attn.v_proj.lora_B.weight"
    arrays[key][2, 3] = bad
    save_file(arrays, str(d / WEIGHTS))    # no checksum: as another tool writes it
    base = build_gpt(0)
    with pytest.raises(AdapterError, match=re.escape(f"tensor {key!r} holds {'NaN' if np.isnan(bad) else 'inf'}")):
        PeftModel.from_pretrained(base, str(d))
    assert not has_wrappers(base)


def test_saving_weights_holding_nan_is_refused_and_writes_nothing(tmp_path):
    peft, _, _ = trained()
    p = peft.get_base_model().blocks[0].attn.q_proj.lora_A["default"].weight
    p.data[0, 0] = np.nan
    with pytest.raises(AdapterError, match=r"adapter 'default': tensor 'base_model\.model\.blocks\.0\.attn\.q_proj"
                                           r"\.lora_A\.weight' holds NaN .*lower the learning rate"):
        peft.save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_saving_the_same_adapter_gives_the_same_bytes(tmp_path):
    """safetensors writes its metadata keys in a random order; the saved files are byte-identical regardless."""
    import hashlib  # noqa: PLC0415

    peft, _, _ = trained()
    digests = set()
    for i in range(5):
        peft.save_pretrained(str(tmp_path / str(i)))
        digests.add(tuple(hashlib.sha256((tmp_path / str(i) / f).read_bytes()).hexdigest() for f in (CONFIG, WEIGHTS)))
    assert len(digests) == 1
    assert load_file(str(tmp_path / "0" / WEIGHTS)).keys() == load_file(str(tmp_path / "4" / WEIGHTS)).keys()


def test_extra_files_are_saved_with_the_adapter_and_bad_names_refused(tmp_path):
    peft, ids, out = trained()
    peft.save_pretrained(str(tmp_path), extra_files={"run.json": b'{"steps": 3}'})
    assert sorted(os.listdir(tmp_path)) == [CONFIG, WEIGHTS, "run.json"]
    assert (tmp_path / "run.json").read_bytes() == b'{"steps": 3}'
    np.testing.assert_array_equal(logits(PeftModel.from_pretrained(build_gpt(0), str(tmp_path)), ids), out)
    for name in ("../run.json", ".hidden", CONFIG, ""):
        with pytest.raises(ValueError, match="must be a plain file name"):
            peft.save_pretrained(str(tmp_path / "x"), extra_files={name: b"{}"})
    with pytest.raises(TypeError, match="must be bytes"):
        peft.save_pretrained(str(tmp_path / "x"), extra_files={"run.json": "{}"})
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "flipped bit"])
def test_bad_weights_file_raises_adapter_error_with_the_path(saved, tmp_path, damage):
    d = copy_of(saved[0], tmp_path)
    w = d / WEIGHTS
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "flipped bit":                     # same size, valid header: only the stored checksum sees it
        raw = bytearray(w.read_bytes())
        raw[8 + int.from_bytes(raw[:8], "little") + 5] ^= 0x01
        w.write_bytes(bytes(raw))
    elif damage == "garbage":
        w.write_bytes(np.random.default_rng(0).bytes(300))
    else:
        w.unlink()
    model = build_gpt(0)
    with pytest.raises(AdapterError) as e:
        PeftModel.from_pretrained(model, str(d))
    assert str(d) in str(e.value) and WEIGHTS in str(e.value)
    assert not has_wrappers(model), "a failed load must hand the base model back unwrapped"


@pytest.mark.parametrize("damage", ["invalid json", "missing", "a json list"])
def test_bad_config_file_raises_adapter_error_with_the_path(saved, tmp_path, damage):
    d = copy_of(saved[0], tmp_path)
    if damage == "missing":
        (d / CONFIG).unlink()
    elif damage == "a json list":
        (d / CONFIG).write_text('[{"peft_type": "LORA"}]')
    else:
        (d / CONFIG).write_text('{"peft_type": "LORA", "r": ')
    with pytest.raises(AdapterError) as e:
        PeftModel.from_pretrained(build_gpt(0), str(d))
    assert str(d) in str(e.value) and CONFIG in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("r", "4"), ("lora_alpha", "8"), ("lora_dropout", "0.1"), ("target_modules", 5), ("use_rslora", "yes"),
    ("layers_to_transform", "0"), ("modules_to_save", 3), ("rank_pattern", [1]), ("inference_mode", "no"),
])
def test_a_wrongly_typed_config_field_names_the_file_the_field_and_the_value(saved, tmp_path, field, value):
    d = copy_of(saved[0], tmp_path)
    cfg = json.loads((d / CONFIG).read_text())
    (d / CONFIG).write_text(json.dumps({**cfg, field: value}))
    want = re.escape(f"{d / CONFIG}: LoraConfig.{field}") + ".*" + re.escape(repr(value))
    with pytest.raises(AdapterError, match=want):
        PeftModel.from_pretrained(build_gpt(0), str(d))


def test_a_failed_load_leaves_the_base_model_reusable(saved, tmp_path):
    """After an AdapterError the same base object loads a good adapter bit-exactly (no stale wrappers)."""
    d = copy_of(saved[0], tmp_path)
    (d / WEIGHTS).write_bytes(b"\x00" * 5)
    model = build_gpt(0)
    with pytest.raises(AdapterError):
        PeftModel.from_pretrained(model, str(d))
    np.testing.assert_array_equal(logits(PeftModel.from_pretrained(model, str(saved[0])), saved[1]), saved[2])


def test_weights_from_another_config_raise_a_shape_error(saved, tmp_path):
    """adapter_config.json says r=4, the weights file holds an r=8 adapter: the key and shapes are named."""
    d = copy_of(saved[0], tmp_path)
    peft8, _, _ = trained(r=8)
    peft8.save_pretrained(str(tmp_path / "r8"))
    shutil.copy(tmp_path / "r8" / WEIGHTS, d / WEIGHTS)
    model = build_gpt(0)
    with pytest.raises(AdapterError, match=r"lora_A\.weight has shape \(8, 16\) but the model expects \(4, 16\)"):
        PeftModel.from_pretrained(model, str(d))
    assert not has_wrappers(model)


def test_base_of_another_shape_raises_even_unchecked(saved):
    with pytest.raises(AdapterError, match="shape"):
        PeftModel.from_pretrained(build_gpt(0, d_model=32, d_ff=64), str(saved[0]), check_base_model=False)


def test_keys_from_another_target_set_raise(saved, tmp_path):
    d = copy_of(saved[0], tmp_path)
    peft_attn, _, _ = trained(target_modules=ATTN)
    peft_attn.save_pretrained(str(tmp_path / "attn"))
    shutil.copy(tmp_path / "attn" / WEIGHTS, d / WEIGHTS)
    with pytest.raises(AdapterError, match="unexpected keys"):
        PeftModel.from_pretrained(build_gpt(0), str(d))


# ---- several adapters ----------------------------------------------------------------------------------
def test_non_default_adapter_saves_in_a_subfolder_and_load_adapter_works(tmp_path):
    peft, ids, out_default = trained()
    _, tgt = batch(21)
    peft.add_adapter("other", LoraConfig(r=2, target_modules=ATTN))
    peft.set_adapter("other")
    train_steps(peft, ids, tgt)
    out_other = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    assert {CONFIG, WEIGHTS, "other"} <= set(os.listdir(tmp_path))
    assert sorted(os.listdir(tmp_path / "other")) == [CONFIG, WEIGHTS]

    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    loaded.load_adapter(str(tmp_path / "other"), "other")
    assert loaded.active_adapter == "default"                                 # loading does not activate
    np.testing.assert_array_equal(logits(loaded, ids), out_default)
    loaded.set_adapter("other")
    np.testing.assert_array_equal(logits(loaded, ids), out_other)
    on_other_base = get_peft_model(build_gpt(1), LoraConfig(r=2))
    with pytest.raises(AdapterError, match="fingerprint"):
        on_other_base.load_adapter(str(tmp_path / "other"), "other")
    assert list(on_other_base.peft_config) == ["default"]


def test_failed_load_adapter_leaves_no_half_adapter(saved, tmp_path):
    d = copy_of(saved[0], tmp_path)
    (d / WEIGHTS).write_bytes(b"junk")
    peft, ids, out = trained()
    with pytest.raises(AdapterError):
        peft.load_adapter(str(d), "broken")
    assert list(peft.peft_config) == ["default"]
    assert not any(".broken." in k for k, _ in peft.named_parameters())
    np.testing.assert_array_equal(logits(peft, ids), out)


def test_adapter_named_like_a_module_round_trips(tmp_path):
    """An adapter called 'attn' (also a module name on every path) keeps its keys and loads back."""
    peft, ids, out = trained(adapter_name="attn")
    peft.save_pretrained(str(tmp_path))
    keys = set(load_file(str(tmp_path / "attn" / WEIGHTS)))
    assert "base_model.model.blocks.0.attn.q_proj.lora_A.weight" in keys
    loaded = get_peft_model(build_gpt(0), LoraConfig(r=2), adapter_name="x")
    loaded.load_adapter(str(tmp_path / "attn"), "attn")
    loaded.set_adapter("attn")
    np.testing.assert_array_equal(logits(loaded, ids), out)


# ---- modules_to_save -----------------------------------------------------------------------------------
def test_modules_to_save_trains_a_copy_and_round_trips(tmp_path):
    ids, tgt = batch(22)
    model = build_gpt(0)
    ln_before = snapshot(model.ln_f)
    peft = get_peft_model(model, LoraConfig(r=4, modules_to_save=["ln_f"]))
    train_steps(peft, ids, tgt)
    out = logits(peft, ids)
    wrapper = peft.base_model.model.ln_f
    for k, v in snapshot(wrapper.original_module).items():
        np.testing.assert_array_equal(v, ln_before[k], err_msg=f"original ln_f.{k} changed")
    copy = snapshot(wrapper.modules_to_save["default"])
    assert any(not np.array_equal(copy[k], ln_before[k]) for k in copy), "the trained copy did not train"

    peft.save_pretrained(str(tmp_path))
    keys = set(load_file(str(tmp_path / WEIGHTS)))
    # PEFT's naming: the trained copy is saved under the module's own path, "modules_to_save.<name>." dropped
    assert {"base_model.model.ln_f.weight", "base_model.model.ln_f.bias"} <= keys
    assert not any("modules_to_save" in k or "original_module" in k for k in keys), keys
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    with loaded.disable_adapter():
        np.testing.assert_array_equal(logits(loaded, ids), logits(build_gpt(0), ids))


def test_modules_to_save_with_bias_all_and_a_named_adapter_round_trip(tmp_path):
    """bias='all' saves every trainable bias under its own path next to the modules_to_save copy's keys;
    a non-default adapter lands in a subfolder and reloads bit-exactly under its name."""
    ids, tgt = batch(23)
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, bias="all", modules_to_save=["ln_f"]), adapter_name="t")
    train_steps(peft, ids, tgt)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    keys = set(load_file(str(tmp_path / "t" / WEIGHTS)))
    assert {"base_model.model.ln_f.bias", "base_model.model.ln_f.weight", "base_model.model.blocks.0.mlp.fc1.bias",
            "base_model.model.blocks.0.attn.v_proj.base_layer.bias"} <= keys, sorted(keys)
    assert "base_model.model.blocks.0.attn.q_proj.lora_A.weight" in keys
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path / "t"), adapter_name="t")
    np.testing.assert_array_equal(logits(loaded, ids), out)


def test_modules_to_save_copies_follow_set_adapter_and_delete_adapter():
    """Each adapter trains its own copy of a modules_to_save module; the active one computes, deleting it hands the
    wrapper to the adapter left, and the wrapper still reads as the module it wraps (`.weight`)."""
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, modules_to_save=["ln_f"]))
    peft.add_adapter("other", LoraConfig(r=2, modules_to_save=["ln_f"]))
    wrapper = peft.get_base_model().ln_f
    assert wrapper.weight is wrapper.original_module.weight                   # attribute reads reach the module
    wrapper.modules_to_save["other"].weight.data[...] = 2.0                   # make the two copies differ
    ids, _ = batch(3)
    default_out = logits(peft, ids)
    peft.set_adapter("other")
    other_out = logits(peft, ids)
    assert not np.array_equal(default_out, other_out)
    peft.set_adapter("default")
    peft.delete_adapter("default")
    assert wrapper.active_adapter == "other" and list(wrapper.modules_to_save) == ["other"]
    np.testing.assert_array_equal(logits(peft, ids), other_out)
