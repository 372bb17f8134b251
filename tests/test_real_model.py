"""SmolLM2-135M-Instruct itself, when its file is cached (skipped, with the reason, when not): the loader's
result, what the model answers, and transformers + Hugging Face PEFT on the same file as the reference where
they are installed (the `bench` extra)."""

from __future__ import annotations

import numpy as np
import pytest
from llm_files import real_gguf_path

from minipeft import LoraConfig, PeftModel, get_peft_model, no_grad, to_numpy
from minipeft.workshop.chat import chat_reply
from minipeft.workshop.llm import load_pretrained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_pretrained(real_gguf_path(), progress=False)


@pytest.fixture(scope="module")
def hf_smol():
    """transformers' LlamaForCausalLM read from the same GGUF file (offline), float32, eager attention."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = real_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    return model, torch


def test_the_real_file_loads_as_smollm2_135m(smol):
    cfg = smol.model.config
    assert smol.model.num_parameters() == 134_515_008
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.vocab_size) == (30, 576, 9, 3, 1536,
                                                                                                  49152)
    assert cfg.tie_embeddings and cfg.rope_base == 100000.0
    assert smol.tokenizer.eos_id == 2                  # <|im_end|>: a reply ends there


def test_it_answers_a_question_greedily(smol):
    reply = chat_reply(smol.model, smol.tokenizer, [{"role": "user", "content": "What is the capital of France?"}],
                       max_new_tokens=20)
    assert reply == "The capital of France is Paris."


PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers, then say 12 + 30 in words."}]


def test_logits_equal_transformers_within_float32(smol, hf_smol):
    """Same dequantized weights, float32 both: max |logit difference| <= 2e-3 on logits of size ~30 (summation
    order over 30 layers; measured ~1e-4), and the same argmax at every position."""
    hf, torch = hf_smol
    ids = smol.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    with no_grad():
        ours = to_numpy(smol.model(np.asarray([ids]))[0].data)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - ref).max() <= 2e-3
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_generation_equals_transformers(smol, hf_smol):
    from minipeft.generate import generate

    hf, torch = hf_smol
    ids = smol.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    ours = generate(smol.model, ids, 40, eos_id=smol.tokenizer.eos_id)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=2)[0, len(ids):]
    ref = [int(t) for t in ref if int(t) != 2]
    assert ours == ref[:len(ours)] and len(ours) == len(ref)


def _lora_logits_match(peft_model, hf_peft, torch, ids):
    with no_grad():
        ours = to_numpy(peft_model(np.asarray([ids]))[0].data)
    with torch.no_grad():
        ref = hf_peft(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - ref).max() <= 2e-3


def test_a_minipeft_lora_adapter_loads_into_hf_peft_with_the_same_logits(smol, hf_smol, tmp_path):
    """B is random (not zero), so the adapter changes the output, and HF PEFT reads our file to the same logits."""
    hf_peft_lib = pytest.importorskip("peft")
    hf, torch = hf_smol
    peft = get_peft_model(smol.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data = rng.standard_normal(p.shape).astype(np.float32) * 0.05
    ids = smol.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    peft.save_pretrained(tmp_path / "ours")
    loaded = hf_peft_lib.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    try:
        _lora_logits_match(peft, loaded, torch, ids)
        with no_grad(), peft.disable_adapter():
            base = to_numpy(peft(np.asarray([ids]))[0].data)
        with torch.no_grad():
            assert np.abs(loaded(torch.tensor([ids])).logits.numpy() - base).max() > 0.1   # the adapter matters
    finally:
        loaded.unload()
        peft.unload()


def test_an_hf_peft_lora_adapter_loads_into_minipeft_with_the_same_logits(smol, hf_smol, tmp_path):
    hf_peft_lib = pytest.importorskip("peft")
    hf, torch = hf_smol
    cfg = hf_peft_lib.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "down_proj"], init_lora_weights=False)
    theirs = hf_peft_lib.get_peft_model(hf, cfg)
    theirs.save_pretrained(tmp_path / "theirs")
    ids = smol.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    try:
        ours = PeftModel.from_pretrained(smol.model, tmp_path / "theirs", check_base_model=False)
        _lora_logits_match(ours, theirs.eval(), torch, ids)
        ours.unload()
    finally:
        theirs.unload()
