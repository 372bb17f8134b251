"""get_peft_model_state_dict / set_peft_model_state_dict and PeftModel.device: Hugging Face PEFT's names, meaning
what they mean there (an adapter's tensors keyed as on disk, the adapter's name dropped)."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import batch, build_gpt, logits, seeded, train_steps
from safetensors.numpy import load_file

import minipeft
from minipeft.peft import (
    AdapterError,
    LoraConfig,
    PromptTuningConfig,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)


def trained_lora(seed: int = 0):
    with seeded(seed):
        model = get_peft_model(build_gpt(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "fc1"]))
        train_steps(model, *batch(seed))
    return model


def test_state_dict_holds_the_adapters_tensors_as_the_file_names_them(tmp_path):
    model = trained_lora()
    sd = get_peft_model_state_dict(model)
    model.save_pretrained(str(tmp_path))
    on_disk = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(sd) == sorted(on_disk) and "base_model.model.blocks.0.attn.q_proj.lora_A.weight" in sd
    assert all(np.array_equal(sd[k], on_disk[k]) for k in sd)
    assert minipeft.get_peft_model_state_dict is get_peft_model_state_dict     # exported where HF exports it


def test_set_loads_into_an_adapter_of_another_name_and_gives_the_same_outputs():
    source = trained_lora()
    target = get_peft_model(build_gpt(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "fc1"]),
                            adapter_name="mine")
    x = batch(1)[0]
    assert not np.allclose(logits(target, x), logits(source, x))   # a trained adapter moves the output
    result = set_peft_model_state_dict(target, get_peft_model_state_dict(source), adapter_name="mine")
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(logits(target, x), logits(source, x))   # the same float32 arrays: bit-equal


def test_set_reports_missing_and_unexpected_keys_and_refuses_a_wrong_shape():
    model = trained_lora()
    sd = get_peft_model_state_dict(model)
    key = "base_model.model.blocks.0.attn.q_proj.lora_A.weight"
    partial = {k: v for k, v in sd.items() if k != key} | {"not.an.adapter.key": np.zeros(2)}
    result = set_peft_model_state_dict(model, partial)
    assert result.missing_keys == [key] and result.unexpected_keys == ["not.an.adapter.key"]
    before = get_peft_model_state_dict(model)
    with pytest.raises(AdapterError, match=r"lora_A.weight has shape \(3, 16\) but adapter 'default' expects"):
        set_peft_model_state_dict(model, {**{k: v * 0 for k, v in sd.items()}, key: np.zeros((3, 16))})
    assert all(np.array_equal(before[k], v) for k, v in get_peft_model_state_dict(model).items())   # nothing set


def test_soft_prompt_state_dict_is_prompt_embeddings():
    model = get_peft_model(build_gpt(), PromptTuningConfig(num_virtual_tokens=3))
    assert list(get_peft_model_state_dict(model)) == ["prompt_embeddings"]


def test_peft_model_device_is_where_its_arrays_live():
    model = trained_lora()
    assert model.device == minipeft.get_device()
    assert isinstance(model.base_model.model.wte.weight.data, type(minipeft.xp().zeros(1)))
