"""Where minipeft's PEFT names must behave as Hugging Face PEFT's do (each case found by reading PEFT's source next to
ours): loading for inference, inference_mode, LoRA's bias with several adapters, disabling adapters that trained
base biases, an optimizer built before set_adapter, the PeftModel attributes HF users reach for, HF's unimplemented
fields at their off values; and where minipeft deliberately differs (regex targets with layers_to_transform)."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import batch, build_gpt, logits, seeded, train_steps

from minipeft import to_numpy
from minipeft.optim import AdamW
from minipeft.peft import ConfigError, LoraConfig, PeftModel, get_peft_model


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(99):
        yield


def trained_adapter(tmp_path, **config):
    """A LoRA adapter (dropout on) trained a few steps and saved; returns its folder."""
    peft = get_peft_model(build_gpt(0), LoraConfig(r=4, lora_dropout=0.3, **config))
    train_steps(peft, *batch(0))
    peft.save_pretrained(str(tmp_path / "a"))
    return str(tmp_path / "a")


def test_from_pretrained_for_inference_is_in_eval_mode_so_two_calls_agree(tmp_path):
    """HF: `if not is_trainable: self.eval()`. Left in training mode, dropout made two calls differ."""
    folder = trained_adapter(tmp_path)
    loaded = PeftModel.from_pretrained(build_gpt(0), folder)
    ids, _ = batch(1)
    assert not loaded.training
    np.testing.assert_array_equal(logits(loaded, ids), logits(loaded, ids))
    trainable = PeftModel.from_pretrained(build_gpt(0), folder, is_trainable=True)
    assert trainable.training and trainable.parameters(trainable_only=True)


def test_load_adapter_for_inference_sets_eval_mode_and_stays_frozen_when_activated(tmp_path):
    folder = trained_adapter(tmp_path)
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2))
    peft.load_adapter(folder, "loaded")
    assert not peft.training
    peft.set_adapter("loaded")      # inference_mode: activating it must not make it trainable
    assert peft.parameters(trainable_only=True) == []
    peft.set_adapter("default")
    assert len(peft.parameters(trainable_only=True)) > 0


def test_inference_mode_config_gives_a_frozen_adapter():
    """HF's inject_adapter freezes an adapter whose config says inference_mode=True."""
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, inference_mode=True))
    assert peft.parameters(trainable_only=True) == []
    assert len(get_peft_model(build_gpt(0), LoraConfig(r=2)).parameters(trainable_only=True)) > 0


def test_a_lora_adapter_with_bias_is_refused_beside_any_other_as_in_hf():
    """HF's rule (LoraModel._check_new_adapter_config): bias != 'none' trains the shared base biases, so such an
    adapter may not be added when the model already holds one; a bias='none' adapter may join a bias one."""
    plain = get_peft_model(build_gpt(0), LoraConfig(r=2))
    with pytest.raises(ValueError, match=r"'b': bias='all' trains the base model's biases.*\['default'\].*"
                                         r"bias='none'"):
        plain.add_adapter("b", LoraConfig(r=2, bias="all"))
    assert sorted(plain.peft_config) == ["default"]      # nothing half-added
    with_bias = get_peft_model(build_gpt(0), LoraConfig(r=2, bias="lora_only"))
    with pytest.raises(ValueError, match="single adapter"):
        with_bias.add_adapter("c", LoraConfig(r=2, bias="all"))
    with_bias.add_adapter("d", LoraConfig(r=2))          # bias='none' beside it is fine, as in HF


def test_disabling_an_adapter_that_trained_base_biases_warns():
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, bias="all"))
    with pytest.warns(UserWarning, match=r"\['default'\] trained the base model's biases"):
        with peft.disable_adapter():
            pass
    with pytest.warns(UserWarning, match="not the base model's"):
        peft.disable_adapter_layers()
    plain = get_peft_model(build_gpt(1), LoraConfig(r=2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # bias='none': the base's output exactly, no warning
        with plain.disable_adapter():
            pass


def test_lora_regex_targets_with_layers_to_transform_apply_both_filters():
    """Hugging Face's LoraConfig refuses this pair; minipeft keeps it (adapters saved before have it): the regex
    picks the modules, layers_to_transform the blocks."""
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=r".*q_proj", layers_to_transform=1))
    wrapped = sorted(p for p, m in peft.named_modules() if type(m).__name__ == "LoraLinear")
    assert wrapped == ["base_model.model.blocks.1.attn.q_proj"]


def test_an_optimizer_over_all_parameters_trains_an_adapter_activated_later():
    """PyTorch's rule: the optimizer keeps every parameter it is given and updates those with a gradient, so an
    adapter frozen when AdamW was built trains once set_adapter() unfreezes it."""
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, init_lora_weights=False))
    peft.add_adapter("b", LoraConfig(r=2, init_lora_weights=False))
    opt = AdamW(peft.parameters(), lr=1e-2)
    peft.set_adapter("b")
    state = {k: np.array(to_numpy(v)) for k, v in peft.state_dict().items()}       # host copies
    b_before = {k: v for k, v in state.items() if ".b." in k}
    default_before = {k: v for k, v in state.items() if ".default." in k}
    ids, targets = batch(2)
    _, loss = peft(ids, targets)
    loss.backward()
    opt.step()
    after = {k: to_numpy(v) for k, v in peft.state_dict().items()}
    assert b_before and any(not np.array_equal(after[k], v) for k, v in b_before.items())
    assert all(np.array_equal(after[k], v) for k, v in default_before.items())     # frozen now: untouched
    assert set(opt.state) <= set(peft.parameters(trainable_only=True))              # state only where trained


def test_peft_model_exposes_config_and_active_adapters():
    base = build_gpt(0)
    peft = get_peft_model(base, LoraConfig(r=2))
    assert peft.config is base.config
    assert peft.active_adapters == ["default"]


def test_from_pretrained_given_a_peft_model_says_to_use_load_adapter(tmp_path):
    folder = trained_adapter(tmp_path)
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2))
    with pytest.raises(TypeError, match=r"takes the base model, got a PeftModel.*load_adapter\("):
        PeftModel.from_pretrained(peft, folder)


def test_files_may_set_hf_fields_minipeft_lacks_only_to_their_off_values():
    """Hugging Face compatibility is at the file boundary: adapter_config.json may carry use_dora=false (accepted, not
    stored); any other value is refused naming the field, whatever the method. The constructor takes only the fields
    the method has, as any dataclass."""
    from minipeft.peft.config import HF_OFF_VALUES
    from minipeft.peft.registry import PEFT_TYPE_TO_CONFIG

    assert LoraConfig.from_dict({"r": 4, "use_dora": False, "fan_in_fan_out": False}) == LoraConfig(r=4)
    with pytest.raises(ConfigError, match=r"LoraConfig sets use_dora=True, a Hugging Face PEFT option .* when off"):
        LoraConfig.from_dict({"use_dora": True})
    with pytest.raises(TypeError, match="use_dora"):
        LoraConfig(use_dora=False)
    checked = 0
    for cls in PEFT_TYPE_TO_CONFIG.values():
        kwargs = {"num_virtual_tokens": 4} if "num_virtual_tokens" in cls.__dataclass_fields__ else {}
        for key, off in HF_OFF_VALUES.items():
            if key in cls.__dataclass_fields__:     # a method that implements the field checks it as its own
                continue
            cls.from_dict({**kwargs, key: off[0]})
            with pytest.raises(ConfigError, match=f"{key}="):
                cls.from_dict({**kwargs, key: "on"})
            checked += 1
    assert checked >= 16 * len(PEFT_TYPE_TO_CONFIG)


def test_saving_several_adapters_writes_none_when_one_cannot_be_saved(tmp_path, monkeypatch):
    from minipeft.peft import AdapterError, save_load

    peft = get_peft_model(build_gpt(0), LoraConfig(r=2))
    peft.add_adapter("second", LoraConfig(r=2))
    real = save_load.adapter_state_dict

    def fail_on_second(model, name):
        if name == "second":
            raise AdapterError("cannot read adapter 'second'")
        return real(model, name)

    monkeypatch.setattr(save_load, "adapter_state_dict", fail_on_second)
    with pytest.raises(AdapterError, match="second"):
        peft.save_pretrained(str(tmp_path / "both"))
    assert not (tmp_path / "both").exists()              # the default adapter's folder was not written either
    monkeypatch.setattr(save_load, "adapter_state_dict", real)
    peft.save_pretrained(str(tmp_path / "both"))
    assert (tmp_path / "both" / "adapter_config.json").is_file()
    assert (tmp_path / "both" / "second" / "adapter_model.safetensors").is_file()


def test_a_subclass_may_implement_a_field_minipeft_lists_as_unsupported():
    """The file's off-value handling is for fields the class lacks: a student's config that adds DoRA as a real field
    keeps it, from the constructor and from a dict."""
    import dataclasses

    @dataclasses.dataclass
    class DoraConfig(LoraConfig):
        use_dora: bool = False

    assert DoraConfig(use_dora=True).use_dora is True
    assert DoraConfig.from_dict({"r": 4, "use_dora": True}).use_dora is True
