"""Mistakes a student makes, each refused with a message that names the thing, the value and the fix, and nothing
written where it should not be: found by probing the public API, one test per fix."""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np
import pytest

import minipeft
from minipeft.generate import generate
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import (
    AdapterError,
    BottleneckConfig,
    ConfigError,
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    SparseConfig,
    get_peft_model,
    select_sparse_entries,
)
from minipeft.quant import quantize_model
from minipeft.train import train
from minipeft.workshop.checkpoint import save_checkpoint
from minipeft.workshop.cli import main
from minipeft.workshop.data import Tokenizer
from minipeft.workshop.finetune import finetune, predict, validation_loss
from minipeft.workshop.pretrain import minipeft_home

ROW = {"dialogue": "#Person1#: hi. #Person2#: hello.", "summary": "They greet."}


def gpt(**overrides) -> GPT:
    minipeft.manual_seed(0)
    return GPT(GPTConfig.from_preset("test", **overrides))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([ROW["dialogue"], ROW["summary"], "Summarize the following conversation. Summary:"] * 5,
                           vocab_size=300)


def batch(step):
    x = np.arange(16).reshape(2, 8) % 64
    return x, np.roll(x, -1, axis=1)


# ---- configs and models -------------------------------------------------------------------------------------
def test_gpt_refuses_a_config_that_is_not_a_gptconfig():
    with pytest.raises(TypeError, match=r"GPT needs a GPTConfig, got dict; build one with GPTConfig\(\*\*fields\)"):
        GPT({"vocab_size": 64})


def test_get_peft_model_refuses_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"model must be a minipeft Module .*got NoneType"):
        get_peft_model(None, LoraConfig())


def test_prompt_tuning_with_more_virtual_tokens_than_the_context_says_so():
    m = get_peft_model(gpt(), PromptTuningConfig(num_virtual_tokens=100))   # allowed: its init can be inspected
    with pytest.raises(ValueError, match=r"num_virtual_tokens=100 fills the model's context length 16.*use at most "
                                         r"15 virtual tokens"):    # was: "truncate the input to at most -84 tokens"
        m(np.array([[1]]))
    with pytest.raises(ValueError, match=r"generate: the model's 100 virtual tokens fill its context_length 16.*"
                                         r"use at most 15 virtual tokens"):
        generate(m, [1], 1)


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "sub/dir", "a\\b"])
def test_adapter_name_with_a_slash_is_refused_so_save_stays_in_its_folder(name, tmp_path):
    m = get_peft_model(gpt(), LoraConfig())
    with pytest.raises(ValueError, match=r"without dots or slashes, such as 'default', got " + re.escape(repr(name))):
        m.add_adapter(name, LoraConfig())
    m.save_pretrained(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_bottleneck_adapter_on_a_4bit_base_trains_in_the_compute_dtype():
    m = get_peft_model(quantize_model(gpt()), BottleneckConfig(bottleneck_size=4))
    trainable = m.parameters(trainable_only=True)
    assert trainable and {p.dtype for p in trainable} == {np.dtype(np.float32)}   # was uint8
    res = train(m, batch, steps=2, optimizer=AdamW(trainable, lr=1e-2), progress=False, log_every=0)
    assert np.isfinite(res.losses).all()


def test_ia3_on_a_4bit_base_names_the_layer_and_the_alternative():
    with pytest.raises(TypeError, match=r"IA3 cannot wrap 'blocks.0.attn.k_proj': it is a Linear4bit .* use LoRA"):
        get_peft_model(quantize_model(gpt()), IA3Config())


def test_module_to_a_device_name_points_at_set_device():
    with pytest.raises(TypeError, match=r"takes a float dtype such as 'float64', got 'cuda'.*set_device\('cuda'\)"):
        gpt().to("cuda")


def test_load_state_dict_takes_a_nested_list_value():
    m = gpt()
    m.load_state_dict({**m.state_dict(), "ln_f.weight": [2.0] * 16})
    assert (m.ln_f.weight.data == 2.0).all()


# ---- inputs ---------------------------------------------------------------------------------------------------
def test_ragged_token_ids_ask_for_padding():
    with pytest.raises(ValueError, match=r"rectangular \(batch, time\) array.*pad them to one length"):
        gpt()([[1, 2, 3], [4]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=float("inf")), r"temperature must be a finite number >= 0.*got inf"),
    (dict(eos_id=64), r"eos_id must be None or a token id in \[0, 64\), got 64; pass tokenizer.eos_id"),
    (dict(eos_id=-1), r"eos_id must be None or a token id in \[0, 64\), got -1"),
    (dict(eos_id="1"), r"eos_id must be None or a token id in \[0, 64\), got '1'"),
    (dict(max_new_tokens=True), r"max_new_tokens must be an int >= 0, got True"),
])
def test_generate_refuses_silently_wrong_settings(kwargs, match):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(gpt(), [1, 2], **kwargs)


# ---- training ---------------------------------------------------------------------------------------------------
def test_optimizer_given_the_module_says_pass_its_parameters():
    with pytest.raises(TypeError, match=r"AdamW got a GPT module; pass its parameters: model.parameters"):
        AdamW(gpt())


def test_train_refuses_an_optimizer_over_another_models_parameters():
    m, other = gpt(), gpt()
    before = minipeft.to_numpy(m.wte.weight.data)
    with pytest.raises(ValueError, match=r"optimizer holds none of this GPT's parameters.*AdamW\(model.parameters"):
        train(m, batch, steps=1, optimizer=AdamW(other.parameters()), progress=False)
    assert np.array_equal(minipeft.to_numpy(m.wte.weight.data), before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(grad_clip="1.0"), r"grad_clip must be a number > 0 or None .*got '1.0'"),
    (dict(eval_every="10"), r"eval_every must be an int >= 0 \(0: never\), got '10'"),
    (dict(log_every=2.5), r"log_every must be an int >= 0 \(0: never\), got 2.5"),
])
def test_train_names_a_mistyped_argument(kwargs, match):
    m = gpt()
    with pytest.raises(ValueError, match=match):
        train(m, batch, steps=1, optimizer=AdamW(m.parameters()), progress=False, **kwargs)


def test_finetune_max_len_must_fit_the_model(tok):
    m = get_peft_model(gpt(vocab_size=300, context_length=128), LoraConfig(r=2))
    with pytest.raises(ValueError, match=r"finetune: max_len=200 is longer than the model takes \(128 positions.*"
                                         r"pass max_len <= 128"):
        finetune(m, tok, "dialogsum", [ROW] * 4, steps=1, batch_size=2, max_len=200, progress=False)
    with pytest.raises(ValueError, match=r"finetune: max_len must be an int >= 1, got 0"):
        finetune(m, tok, "dialogsum", [ROW] * 4, steps=1, batch_size=2, max_len=0, progress=False)


@pytest.mark.parametrize("rows, match", [
    (ROW, r"row 0: dialogsum example must be a dict .*got str 'dialogue'; pass a list of such dicts"),
    ([{**ROW, "summary": 5}] * 4, r"row 0: dialogsum example fields must be strings, got \{'summary': 'int'\}"),
    ([{**ROW, "summary": None}] * 4, r"fields must be strings, got \{'summary': 'NoneType'\}"),
])
def test_finetune_rows_of_the_wrong_shape_name_the_row_and_field(rows, match, tok):
    m = get_peft_model(gpt(vocab_size=300, context_length=128), LoraConfig(r=2))
    with pytest.raises(TypeError, match=match):
        finetune(m, tok, "dialogsum", rows, steps=1, batch_size=2, progress=False)


def test_predict_and_validation_loss_check_their_counts(tok):
    m = gpt(vocab_size=300, context_length=128)
    with pytest.raises(ValueError, match=r"predict: max_new_tokens must be an int >= 1, got 0"):
        predict(m, tok, [ROW], "dialogsum", max_new_tokens=0)
    with pytest.raises(ValueError, match=r"validation_loss: batch_size must be an int >= 1, got 0"):
        validation_loss(m, tok, [ROW], "dialogsum", batch_size=0)


# ---- files -------------------------------------------------------------------------------------------------------
def test_save_pretrained_onto_a_file_says_it_needs_a_folder(tmp_path):
    f = tmp_path / "adapter.safetensors"
    f.write_bytes(b"keep me")
    with pytest.raises(AdapterError, match=r"adapter.safetensors' is a file, but an adapter is saved as a folder"):
        get_peft_model(gpt(), LoraConfig()).save_pretrained(str(f))
    assert f.read_bytes() == b"keep me"


def test_save_pretrained_selected_adapters_as_a_string(tmp_path):
    with pytest.raises(TypeError, match=r"selected_adapters must be a list .*got the string 'default'; pass "
                                        r"\['default'\]"):
        get_peft_model(gpt(), LoraConfig()).save_pretrained(str(tmp_path / "a"), selected_adapters="default")
    assert not (tmp_path / "a").exists()


def test_from_pretrained_given_the_weights_file_asks_for_the_folder(tmp_path):
    get_peft_model(gpt(), LoraConfig()).save_pretrained(str(tmp_path))
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors' is a file; pass the adapter folder"):
        PeftModel.from_pretrained(gpt(), str(tmp_path / "adapter_model.safetensors"))


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def test_tokenizer_train_refuses_one_string_and_a_string_size():
    with pytest.raises(TypeError, match=r"texts must be a list of strings, got a single str; pass \[text\]"):
        Tokenizer.train("hello world", vocab_size=300)
    with pytest.raises(TypeError, match=r"vocab_size must be an int, got '300'"):
        Tokenizer.train(["hello world"], vocab_size="300")


def test_tokenizer_decode_of_a_batch_says_decode_each_row(tok):
    with pytest.raises(ValueError, match=r"one sequence .*got shape \(1, 2\); decode each row"):
        tok.decode(np.array([[1, 2]]))


# ---- command line: checked before any work, exit code 2 ----------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["generate", "--prompt", "hi", "--temperature", "-1"], "argument --temperature: expected a finite number >= 0"),
    (["generate", "--prompt", "hi", "--temperature", "inf"], "argument --temperature: expected a finite number >= 0"),
    (["finetune", "--method", "lora-all", "--out", "{file}", "--quick", "--steps", "1", "--batch-size", "2",
      "--n-train", "2", "--n-test", "0"], "argument --out: .* is a file"),
    (["merge", "--quick", "--adapter", "{dir}", "--out", "{file}"], "argument --out: .* is a file"),
])
def test_cli_bad_values_exit_2_before_any_work(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))   # were the check missing, work would start here
    (tmp_path / "f").write_text("")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_quantize_model_and_finetune_name_a_wrong_argument(tok):
    with pytest.raises(TypeError, match="quantize_model: model must be a minipeft Module.*got NoneType"):
        quantize_model(None)
    with pytest.raises(TypeError, match="finetune: tok must be the tokenizer.*got NoneType"):
        finetune(get_peft_model(gpt(), LoraConfig(r=2)), None, "dialogsum", [ROW] * 4, steps=1, batch_size=2)


# ---- errors that say the fix: each refused before any work, naming the thing, the value and the fix --------------
def test_finetune_of_an_adapter_loaded_for_inference_says_is_trainable(tmp_path, tok):
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(gpt(), str(tmp_path))
    with pytest.raises(ValueError, match=r"\['default'\] were loaded for inference.*is_trainable=True"):
        finetune(loaded, tok, "dialogsum", [ROW] * 4, steps=1, batch_size=2)


def test_a_qlora_adapter_on_the_float_base_and_the_reverse_mention_quantization(tmp_path):
    get_peft_model(quantize_model(gpt()), LoraConfig(r=2)).save_pretrained(str(tmp_path / "q"))
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(str(tmp_path / "f"))
    with pytest.raises(AdapterError, match=r"fingerprint.*this base is not quantized.*quantize_model\(base"):
        PeftModel.from_pretrained(gpt(), str(tmp_path / "q"))
    with pytest.raises(AdapterError, match=r"fingerprint.*this base is 4-bit quantized.*loads onto the float base"):
        PeftModel.from_pretrained(quantize_model(gpt()), str(tmp_path / "f"))


def test_a_folder_relabelled_with_another_methods_peft_type_names_the_type(tmp_path):
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"LORA"', '"IA3"'))
    with pytest.raises(AdapterError, match=r"peft_type is 'IA3', but the fields are those of a 'LORA' config.*"
                                           r"Set \"peft_type\": 'LORA'"):
        PeftModel.from_pretrained(gpt(), str(tmp_path))


@pytest.mark.parametrize("config", [PromptTuningConfig, PrefixTuningConfig])
def test_a_soft_prompt_larger_than_the_base_is_refused_before_it_is_allocated(config):
    with pytest.raises(ConfigError, match=r"num_virtual_tokens=1000000000 .*GiB in float32\), more than the whole "
                                          r"base model's 5,760 parameters.*at most 15 here"):
        get_peft_model(gpt(), config(num_virtual_tokens=10**9))   # was numpy's MemoryError for 59.6 GiB


def test_save_checkpoint_under_a_file_names_the_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match=r"save_checkpoint: cannot write .*f.*is a file, not a folder"):
        save_checkpoint(gpt(), tmp_path / "f" / "sub" / "model.safetensors")


def test_minipeft_home_pointing_at_a_file_names_the_variable(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError, match=r"MINIPEFT_HOME is .*f, but .*f is a file.*set MINIPEFT_HOME to a "
                                                 r"folder"):
        minipeft_home()


@pytest.mark.parametrize("batches, error", [
    ([np.arange(8) % 64], TypeError),                                # a sequence of ids, not a batch
    ([(np.arange(8) % 64, np.arange(8) % 64)], ValueError),          # a pair of 1-D ids
    ([{"input_ids": np.zeros((2, 4), int), "targets": np.zeros((2, 3), int)}], ValueError),
])
def test_select_sparse_entries_given_1d_ids_says_what_a_batch_is(batches, error):
    with pytest.raises(error, match=r"select_sparse_entries: batch 0 .*pair \(x, y\), both int arrays of shape "
                                    r"\(batch, time\)"):
        select_sparse_entries(gpt(), SparseConfig(percent=1.0), batches)


@pytest.mark.parametrize("argv, match", [
    (["finetune", "--method", "lora-all", "--out", "", "--quick"], r"argument --out: an empty path would write into "
                                                                    r"the current folder"),
    (["finetune", "--method", "lora-all", "--out", "{file}/sub", "--quick"], r"argument --out: .* is a file, not a "
                                                                             r"folder"),
    (["finetune", "--method", "lora-all", "--out", "o", "--lr", "-1e-3"], r"argument --lr: expected a finite number "
                                                                          r"> 0, got -1e-3"),
    (["compare", "--quick", "--out", "{file}"], r"argument --out: .* is a file"),
    (["finetune", "--method", "lora-all", "--out", "{dir}/o", "--quick", "--plot"], r"--plot needs matplotlib.*"
                                                                                   r"minipeft\[plots\]"),
])
def test_cli_refuses_before_any_work(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))   # were the check missing, work would start here
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path) for a in argv]
    if "--plot" in argv and importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed: --plot is accepted")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]          # nothing written, no base built


def test_cli_minipeft_home_pointing_at_a_file_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "f"))
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--quick"])
    assert e.value.code == 2 and "MINIPEFT_HOME is" in capsys.readouterr().err


def test_cli_a_corrupt_run_record_is_named_before_the_base_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    get_peft_model(gpt(), LoraConfig(r=2)).save_pretrained(str(tmp_path / "a"))
    (tmp_path / "a" / "minipeft_run.json").write_text('{"method": "qlo')
    assert main(["generate", "--adapter", str(tmp_path / "a"), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"minipeft_run.json is not valid JSON .*run finetune --out .*a again, or delete the file", err)
    assert not (tmp_path / "home").exists()
