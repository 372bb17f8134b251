"""Spec of Hugging Face adapter configs: rank_pattern and alpha_pattern with HF's meaning, "all-linear", and
every option we do not implement refused by name (never ignored, never blamed on the base model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lora_helpers import batch, build_gpt, logits, seeded
from safetensors.numpy import save_file

from minipeft import to_numpy
from minipeft.peft import AdapterError, ConfigError, LoraConfig, LoraLinear, PeftModel, get_peft_model

C = 16  # the test GPT's width

# adapter_config.json as Hugging Face PEFT (0.13+) writes it for a LoRA on q_proj and v_proj
HF_CONFIG = {
    "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "minipeft-test", "bias": "none",
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
    "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.05, "megatron_config": None,
    "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "r": 2, "rank_pattern": {},
    "revision": None, "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM", "use_dora": False,
    "use_rslora": False,
}


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(77):
        yield


def write_hf_adapter(d, config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """An adapter folder as Hugging Face PEFT saves it (its key names, no fingerprint); returns the arrays."""
    rng = np.random.default_rng(seed)
    ranks = {"q_proj": config["r"], "v_proj": config["rank_pattern"].get("v_proj", config["r"])}
    arrays = {}
    for i in range(2):
        for name, r in ranks.items():
            key = f"base_model.model.blocks.{i}.attn.{name}"
            arrays[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (r, C)).astype(np.float32)
            arrays[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (C, r)).astype(np.float32)
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(config))
    save_file(arrays, str(d / "adapter_model.safetensors"))
    return arrays


def delta(arrays, layer: int, name: str, scale: float) -> np.ndarray:
    key = f"base_model.model.blocks.{layer}.attn.{name}"
    return scale * arrays[f"{key}.lora_B.weight"].astype(np.float64) @ arrays[f"{key}.lora_A.weight"]


def test_hf_adapter_with_alpha_pattern_gives_the_equations_output(tmp_path):
    """alpha_pattern={"v_proj": 32}: v_proj scales by 32/r, q_proj by lora_alpha/r; the merged weights say so."""
    cfg = {**HF_CONFIG, "alpha_pattern": {"v_proj": 32}}
    arrays = write_hf_adapter(tmp_path, cfg)
    peft = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    attn = peft.get_base_model().blocks[1].attn
    assert attn.v_proj.scaling["default"] == 32 / 2 and attn.q_proj.scaling["default"] == 8 / 2
    base = build_gpt(0)
    plain = peft.merge_and_unload()
    for i in range(2):
        for name, s in (("q_proj", 4.0), ("v_proj", 16.0)):
            W = to_numpy(getattr(plain.blocks[i].attn, name).weight.data).astype(np.float64)
            W0 = to_numpy(getattr(base.blocks[i].attn, name).weight.data).astype(np.float64)
            np.testing.assert_allclose(W - W0, delta(arrays, i, name, s), rtol=1e-5, atol=1e-6)  # float32 rounding


def test_hf_adapter_with_rank_pattern_loads_each_layer_at_its_rank(tmp_path):
    cfg = {**HF_CONFIG, "rank_pattern": {"v_proj": 4}}
    write_hf_adapter(tmp_path, cfg)
    peft = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    attn = peft.get_base_model().blocks[0].attn
    assert attn.v_proj.lora_A["default"].weight.shape == (4, C) and attn.q_proj.lora_A["default"].weight.shape == (2, C)
    assert attn.v_proj.scaling["default"] == 8 / 4   # alpha / the pattern's rank


@pytest.mark.parametrize("pattern, ranks", [
    ({"v_proj": 4}, {"blocks.0.attn.v_proj": 4, "blocks.1.attn.v_proj": 4, "blocks.0.attn.q_proj": 2}),
    ({"blocks.1.attn.v_proj": 5}, {"blocks.0.attn.v_proj": 2, "blocks.1.attn.v_proj": 5}),
    ({"attn.q_proj": 3}, {"blocks.0.attn.q_proj": 3, "blocks.0.attn.v_proj": 2}),
    pytest.param({"_proj": 6}, {"blocks.0.attn.q_proj": 2, "blocks.1.attn.v_proj": 2},   # a key matches at a dot only
                 marks=pytest.mark.filterwarnings("ignore:LoraConfig.rank_pattern")),
    ({r"blocks\.[01]\.attn\.v_proj": 3, "v_proj": 7}, {"blocks.0.attn.v_proj": 3}),  # the first match wins
])
def test_rank_pattern_keys_are_regexes_matched_at_a_dot_boundary(pattern, ranks):
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], rank_pattern=pattern))
    for path, r in ranks.items():
        layer = peft.get_base_model().get_submodule(path)
        assert layer.lora_A["default"].weight.shape == (r, C), path
        assert layer.lora_B["default"].weight.shape == (C, r), path


def test_rank_and_alpha_patterns_round_trip_through_our_files(tmp_path):
    ids, _ = batch(5)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 3},
                     alpha_pattern={"blocks.0.attn.q_proj": 10}, init_lora_weights=False)
    peft = get_peft_model(build_gpt(0), cfg)
    peft.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {"v_proj": 3} and saved["alpha_pattern"] == {"blocks.0.attn.q_proj": 10}
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), logits(peft, ids))
    assert loaded.get_base_model().blocks[0].attn.q_proj.scaling["default"] == 10 / 2


@pytest.mark.parametrize("field, value", [
    ("use_dora", True), ("fan_in_fan_out", True), ("lora_bias", True), ("layer_replication", [[0, 1]]),
    ("loftq_config", {"loftq_bits": 4}), ("layers_pattern", "h"), ("exclude_modules", ["q_proj"]),
    ("made_up_option", 1),
])
def test_an_option_we_do_not_implement_is_refused_by_name(tmp_path, field, value):
    write_hf_adapter(tmp_path, {**HF_CONFIG, field: value})
    base = build_gpt(0)
    with pytest.raises(AdapterError, match=field) as e:
        PeftModel.from_pretrained(base, str(tmp_path))
    assert "base model" not in str(e.value) and "fingerprint" not in str(e.value)
    assert not any(isinstance(m, LoraLinear) for _, m in base.named_modules())
    with pytest.raises(ConfigError, match=field):
        LoraConfig.from_dict({**HF_CONFIG, field: value})


def test_every_option_at_its_off_value_loads(tmp_path):
    ids, _ = batch(6)
    arrays = write_hf_adapter(tmp_path, HF_CONFIG)
    peft = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    assert peft.peft_config["default"].lora_dropout == 0.05
    assert np.abs(logits(peft, ids) - logits(build_gpt(0), ids)).max() > 1e-3
    assert len(arrays) == len(peft.base_model.adapter_state_keys("default"))


@pytest.mark.parametrize("kwargs, field", [
    ({"rank_pattern": {"v_proj": 0}}, "rank_pattern"), ({"rank_pattern": {"v_proj": 2.5}}, "rank_pattern"),
    ({"alpha_pattern": {"v_proj": -1}}, "alpha_pattern"), ({"rank_pattern": {"(": 2}}, "rank_pattern"),
    ({"rank_pattern": [("v_proj", 2)]}, "rank_pattern"), ({"task_type": "SEQ_CLS"}, "task_type"),
])
def test_bad_pattern_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        LoraConfig(**kwargs)


def test_all_linear_targets_every_linear_but_the_output_layer():
    peft = get_peft_model(build_gpt(0, tie_embeddings=False), LoraConfig(r=2, target_modules="all-linear"))
    wrapped = {p.split(".", 2)[-1] for p, m in peft.named_modules() if isinstance(m, LoraLinear)}
    per_block = {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"}
    assert wrapped == {f"blocks.{i}.{n}" for i in range(2) for n in per_block}


# ---- files as Hugging Face PEFT 0.22 writes them ----------------------------------------------------------------
# the fields PEFT 0.22 added, all written as null (a newer release adds more); minipeft knows none of them
PEFT_022_NEW = {"astra_config": None, "kasa_config": None, "lora_ga_config": None, "monteclora_config": None,
                "use_bdlora": None, "velora_config": None}


def test_a_peft_022_lora_file_loads_with_one_warning_naming_its_unknown_null_fields(tmp_path):
    ids, _ = batch(6)
    arrays = write_hf_adapter(tmp_path, {**HF_CONFIG, **PEFT_022_NEW, "peft_version": "0.22.0"})
    with pytest.warns(UserWarning, match="ignoring fields minipeft does not know") as caught:
        peft = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    assert len(caught) == 1 and all(name in str(caught[0].message) for name in PEFT_022_NEW)
    assert np.abs(logits(peft, ids) - logits(build_gpt(0), ids)).max() > 1e-3
    assert len(arrays) == len(peft.base_model.adapter_state_keys("default"))


@pytest.mark.parametrize("value", [False, "", [], {}])
def test_an_unknown_field_that_is_off_is_accepted(value):
    with pytest.warns(UserWarning, match="new_option"):
        cfg = LoraConfig.from_dict({**HF_CONFIG, "new_option": value})
    assert not hasattr(cfg, "new_option")


@pytest.mark.parametrize("value", [True, 0, "yes", [1], {"a": 1}])
def test_an_unknown_field_that_is_on_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="'velora_config'.*accepts an unknown field only when it is off"):
        LoraConfig.from_dict({**HF_CONFIG, **PEFT_022_NEW, "velora_config": value})


def test_files_written_by_hf_peft_load(tmp_path):
    """LoRA and prefix-tuning configs as the installed Hugging Face PEFT writes them (with its newest fields)."""
    peft = pytest.importorskip("peft")
    from minipeft.peft import PrefixTuningConfig  # noqa: PLC0415
    from minipeft.peft.registry import config_from_dict  # noqa: PLC0415

    peft.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                    rank_pattern={"v_proj": 3}).save_pretrained(str(tmp_path / "lora"))
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    write_hf_adapter(tmp_path / "lora", saved)
    with pytest.warns(UserWarning, match="ignoring fields minipeft does not know"):
        loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path / "lora"))
    assert loaded.get_base_model().blocks[0].attn.v_proj.lora_A["default"].weight.shape == (3, C)
    peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM").save_pretrained(str(tmp_path / "prefix"))
    saved = json.loads((tmp_path / "prefix" / "adapter_config.json").read_text())
    with pytest.warns(UserWarning, match="init_weights"):
        cfg = config_from_dict(saved)
    assert isinstance(cfg, PrefixTuningConfig) and cfg.num_virtual_tokens == 3


# ---- rank_pattern / alpha_pattern: the first matching key wins, so their order is kept on disk ------------------
ORDERED = dict(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False,
               alpha_pattern={"q_proj": 32, r"blocks\.1\..*": 3}, rank_pattern={"q_proj": 2, r"blocks\.0\..*": 5})


def test_overlapping_patterns_keep_their_order_through_save_and_load(tmp_path):
    ids, _ = batch(7)
    peft = get_peft_model(build_gpt(0), LoraConfig(**ORDERED))
    q1 = peft.get_base_model().blocks[1].attn.q_proj
    assert q1.scaling["default"] == 32 / 2 and q1.lora_A["default"].weight.shape == (2, C)   # "q_proj" wins both
    peft.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert list(saved["alpha_pattern"]) == ["q_proj", r"blocks\.1\..*"]
    assert list(saved["rank_pattern"]) == ["q_proj", r"blocks\.0\..*"]
    loaded = PeftModel.from_pretrained(build_gpt(0), str(tmp_path))
    for i in range(2):
        assert loaded.get_base_model().blocks[i].attn.q_proj.scaling["default"] == 16.0
    np.testing.assert_array_equal(logits(loaded, ids), logits(peft, ids))
    assert list(LoraConfig.from_dict(json.loads(peft.peft_config["default"].to_json())).alpha_pattern) == [
        "q_proj", r"blocks\.1\..*"]


# ---- entries that match nothing: a warning naming them and the nearest module name ----------------------------
def test_a_misspelt_target_beside_a_right_one_warns_with_the_nearest_name():
    with pytest.warns(UserWarning, match=r"target_modules: 'v_prj' \(nearest module name: 'v_proj'\) matched no "
                                         "module"):
        peft = get_peft_model(build_gpt(0), LoraConfig(target_modules=["q_proj", "v_prj"]))
    assert isinstance(peft.get_base_model().blocks[0].attn.q_proj, LoraLinear)


def test_a_pattern_key_that_matches_no_wrapped_module_warns_with_the_nearest_name():
    with pytest.warns(UserWarning, match=r"rank_pattern: 'v_prj' \(nearest module name: 'v_proj'\) matched no module"):
        peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                       rank_pattern={"v_prj": 4}))
    assert peft.get_base_model().blocks[0].attn.v_proj.lora_A["default"].weight.shape == (2, C)   # the default r
    with pytest.warns(UserWarning, match=r"alpha_pattern: 'blocks.*7.*q_proj' \(nearest module name: 'q_proj'\)"):
        get_peft_model(build_gpt(0), LoraConfig(target_modules=["q_proj"],
                                                alpha_pattern={r"blocks\.7\.attn\.q_proj": 2}))


def test_targets_and_patterns_that_all_match_give_no_warning():
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_peft_model(build_gpt(0), LoraConfig(target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 4},
                                                alpha_pattern={r"blocks\.1\.attn\.q_proj": 2}))
