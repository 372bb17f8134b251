"""Selective fine-tuning (BitFit, LayerNorm tuning, last k blocks, embeddings, full fine-tuning as a config):
the counts, that only the selected tensors train (and exactly as in-place training would), the tied
embedding, merge, files, storage, and the errors. The tuner contract (test_tuner_contract.py) covers the rest."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import batch, build_gpt, logits, seeded, snapshot

from minipeft import backend, no_grad, to_numpy
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import AdapterError, ConfigError, PeftModel, get_peft_model
from minipeft.peft.storage import adapter_file_bytes, adapter_tensor_bytes
from minipeft.peft.tuners.selective import (
    SelectiveConfig,
    bitfit_config,
    embeddings_config,
    full_finetune_config,
    last_k_layers_config,
    layernorm_config,
)
from minipeft.quant import quantize_model

WD = 0.1   # a large weight decay, so a parameter the optimizer touched by mistake would visibly shrink


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(7):
        yield


def adamw_steps(model, steps: int, lr: float = 1e-2, seed: int = 1) -> AdamW:
    """`steps` AdamW steps with weight decay WD on the model's trainable parameters, one batch per step."""
    opt = AdamW(model.parameters(trainable_only=True), lr=lr, weight_decay=WD)
    for s in range(steps):
        ids, tgt = batch(seed + s)
        opt.zero_grad()
        _, loss = model(ids, tgt)
        loss.backward()
        opt.step()
    return opt


# ---- counts: closed forms from the GPT's shapes, over many shapes -----------------------------------------
gpt_shapes = st.fixed_dictionaries({
    "vocab_size": st.integers(8, 40), "d_model": st.sampled_from([4, 8]), "n_layer": st.integers(1, 3),
    "d_ff": st.integers(2, 12), "bias": st.booleans(), "position_embedding": st.sampled_from(["learned", "rope"]),
})


def closed_forms(c: GPTConfig, k: int) -> dict[str, int]:
    """Trainable counts by formula: d = d_model, f = d_ff, L blocks, b = 1 with biases."""
    d, f, L, V, b = c.d_model, c.d_ff, c.n_layer, c.vocab_size, int(c.bias)
    block = 4 * (d * d + b * d) + (d * f + b * f) + (f * d + b * d) + 2 * (d + b * d)   # attn, fc1, fc2, 2 LayerNorms
    total = V * d + (c.context_length * d if c.position_embedding == "learned" else 0) + L * block + (d + b * d)
    return {"bitfit": b * (L * (4 * d + f + d + 2 * d) + d), "layernorm": (2 * L + 1) * (d + b * d),
            "last_k": k * block, "embeddings": V * d, "full": total}


@given(shape=gpt_shapes, data=st.data())
def test_trainable_counts_equal_the_closed_forms(shape, data):
    cfg = GPTConfig(context_length=8, n_head=2, **shape)
    k = data.draw(st.integers(1, cfg.n_layer), label="k")
    want = closed_forms(cfg, k)
    configs = {"bitfit": bitfit_config(), "layernorm": layernorm_config(),
               "last_k": last_k_layers_config(k, cfg.n_layer),
               "embeddings": embeddings_config(), "full": full_finetune_config()}
    n_base = GPT(cfg).num_parameters()
    assert n_base == want["full"]
    for name, config in configs.items():
        if want[name] == 0:      # BitFit on a model without biases selects nothing: a clear error, not 0 trainable
            with pytest.raises(ValueError, match=r"asks for the bias terms \(BitFit\), but this GPT has no bias"):
                get_peft_model(GPT(cfg), config)
            continue
        peft = get_peft_model(GPT(cfg), config)
        assert peft.get_nb_trainable_parameters() == (want[name], n_base + want[name]), name


@given(types=st.lists(st.sampled_from(["bias", "norm"]), unique=True),
       layers=st.none() | st.lists(st.integers(0, 2), min_size=1, unique=True),
       targets=st.none() | st.lists(st.sampled_from(["fc1", "q_proj", "ln_f", "wte", "attn"]), min_size=1, unique=True))
def test_any_selection_trains_exactly_the_parameters_its_rules_name(types, layers, targets):
    base = build_gpt(0, n_layer=3)

    def picked(name: str) -> bool:       # the rules, read off the parameter's dotted name
        path, pname = name.rsplit(".", 1)
        parts = path.split(".")
        by_module = targets is not None and any(p in targets for p in parts)
        by_kind = ("bias" in types and pname == "bias") or ("norm" in types and parts[-1].startswith("ln_"))
        in_layers = layers is None or (parts[0] == "blocks" and int(parts[1]) in layers)
        return (by_module or by_kind) and in_layers

    want = sum(p.size for n, p in base.named_parameters() if picked(n))
    try:
        config = SelectiveConfig(trainable_types=types, target_modules=targets, layers_to_transform=layers)
        peft = get_peft_model(base, config)
    except (ConfigError, ValueError) as e:
        assert want == 0 and re.search(r"selects nothing|selected no parameter", str(e))
        return
    assert peft.get_nb_trainable_parameters()[0] == want > 0


# ---- only the selected parameters train, exactly as in-place training would train them --------------------
@pytest.mark.parametrize("make", [bitfit_config, layernorm_config, lambda: last_k_layers_config(1, 2)],
                         ids=["bitfit", "layernorm", "last_k"])
def test_unselected_entries_stay_bit_identical_after_many_adamw_steps_with_weight_decay(make):
    base = build_gpt(0)
    before = snapshot(base)
    peft = get_peft_model(base, make())
    opt = adamw_steps(peft, steps=25)
    copies = dict(peft.base_model.adapter_parameters("default").items())
    assert {id(p) for p in opt.state} == {id(p) for p in copies.values()}      # optimizer state for the copies only
    assert all(p.grad is None for _, p in peft.get_base_model().named_parameters() if not p.requires_grad)
    during = snapshot(peft.get_base_model(), skip="selective_")
    assert all(np.array_equal(before[k.replace(".base_layer", "")], v) for k, v in during.items())  # base untouched
    selected = {live.replace("model.", "", 1).replace(".selective_", ".").rsplit(".", 1)[0] for live in copies}
    merged = snapshot(peft.merge_and_unload())
    for name, value in merged.items():
        if name in selected:
            assert not np.array_equal(value, before[name]), f"{name} did not train"
        else:
            assert np.array_equal(value, before[name]), f"{name} moved but was not selected"


@pytest.mark.parametrize("make,trains", [(bitfit_config, lambda n: n.endswith(".bias")),
                                         (full_finetune_config, lambda n: True),
                                         (embeddings_config, lambda n: n == "wte.weight")],
                         ids=["bitfit", "full", "embeddings (tied head)"])
def test_the_copies_train_exactly_as_in_place_training_trains_the_originals(make, trains):
    # same ops on the same values, the same AdamW (weight decay included): bit-identical weights after training
    peft = get_peft_model(build_gpt(0), make())
    adamw_steps(peft, steps=10)
    plain = build_gpt(0)
    for n, p in plain.named_parameters():
        p.requires_grad = trains(n)
    adamw_steps(plain, steps=10)
    got = snapshot(peft.merge_and_unload())
    want = snapshot(plain)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_the_tied_head_reads_the_trained_embedding_copy():
    ids, _ = batch(0)
    peft = get_peft_model(build_gpt(0), embeddings_config())
    (copy,) = peft.base_model.adapter_parameters("default").values()
    assert copy.shape == (64, 16) and peft.get_nb_trainable_parameters()[0] == 64 * 16    # one tensor, not two
    copy.data = backend.asarray(np.random.default_rng(0).normal(0, 0.3, copy.shape), dtype=copy.dtype)
    plain = build_gpt(0)
    with no_grad():
        plain.wte.weight.data = copy.data.copy()      # the lookup and the head both read the new table
    np.testing.assert_array_equal(logits(peft, ids), logits(plain, ids))
    with peft.disable_adapter():
        np.testing.assert_array_equal(logits(peft, ids), logits(build_gpt(0), ids))


def test_merge_writes_the_copies_and_unmerge_restores_the_base_bit_for_bit():
    ids, _ = batch(3)
    base = build_gpt(0)
    before = snapshot(base)
    peft = get_peft_model(base, SelectiveConfig(trainable_types=["bias", "norm"], target_modules=["wte"]))
    adamw_steps(peft, steps=5)
    out = logits(peft, ids)
    peft.merge_adapter()
    np.testing.assert_array_equal(logits(peft, ids), out)      # an assignment: merged equals unmerged exactly
    assert np.abs(out - logits(build_gpt(0), ids)).max() > 1e-3
    peft.unmerge_adapter()
    after = snapshot(peft.get_base_model(), skip="selective_")
    assert all(np.array_equal(before[k.replace(".base_layer", "")], v) for k, v in after.items())
    np.testing.assert_array_equal(logits(peft, ids), out)


# ---- files and storage ------------------------------------------------------------------------------------
def test_a_trained_adapter_file_round_trips_bit_exactly_and_refuses_another_base(tmp_path):
    ids, _ = batch(2)
    peft = get_peft_model(build_gpt(0), last_k_layers_config(1, 2))
    adamw_steps(peft, steps=5)
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    for k, p in peft.base_model.adapter_parameters("default").items():
        assert np.array_equal(to_numpy(p.data), to_numpy(dict(loaded.base_model.named_parameters())[k].data))
    with pytest.raises(AdapterError, match="was trained on a base model with fingerprint"):
        PeftModel.from_pretrained(build_gpt(1), str(tmp_path))


@pytest.mark.parametrize("make", [bitfit_config, full_finetune_config], ids=["bitfit", "full"])
def test_storage_is_the_selected_tensors_and_full_fine_tuning_stores_a_whole_copy(make):
    base = build_gpt(0)
    n_base_bytes = sum(int(p.data.nbytes) for p in base.parameters())
    peft = get_peft_model(base, make())
    trainable = peft.get_nb_trainable_parameters()[0]
    predicted, measured = adapter_tensor_bytes(peft), adapter_file_bytes(peft)
    assert predicted == 4 * trainable                         # float32 copies, nothing else
    assert predicted < measured < predicted + 16384           # plus the safetensors header and adapter_config.json
    if make is full_finetune_config:
        assert predicted == n_base_bytes                      # a full copy per task (the tied table once)


# ---- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,field", [
    (dict(trainable_types=[]), "selects nothing"),
    (dict(trainable_types=["weights"]), "trainable_types"),
    (dict(trainable_types="bias"), "trainable_types"),
    (dict(target_modules=[]), "target_modules"),
    (dict(layers_to_transform=[-1]), "layers_to_transform"),
    (dict(target_modules="(unclosed"), "target_modules"),
])
def test_bad_configs_raise_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        SelectiveConfig(**kwargs)


def test_a_quantized_layer_is_refused_by_name():
    with pytest.raises(TypeError, match=r"'blocks.0.attn.q_proj', a Linear4bit"):
        get_peft_model(quantize_model(build_gpt(0)), bitfit_config())


def test_a_selection_that_matches_nothing_in_the_model_raises_naming_it():
    with pytest.raises(ValueError, match=r"layers_to_transform=\[7\]"):
        get_peft_model(build_gpt(0), SelectiveConfig(trainable_types=["all"], layers_to_transform=[7]))
    with pytest.raises(ValueError, match=r"target_modules=\['lm_head'\] selected no parameter"):
        get_peft_model(build_gpt(0), SelectiveConfig(target_modules=["lm_head"]))
    with pytest.raises(ConfigError, match=r"k must be an int in \[1, n_layer=2\], got k=3"):
        last_k_layers_config(3, 2)
