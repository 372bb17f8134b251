"""minipeft's methods on a Llama compute what Hugging Face PEFT computes on transformers' LlamaForCausalLM.

Both models get the same tiny random weights (our parameter names are transformers' names, so the state dict copies
as it is), each library builds the adapter from its own config with the same fields, our trained adapter weights
are copied into HF's adapter (the parameter names agree too), and the logits must agree. Skipped where torch,
transformers or peft is not installed.

Tolerance: both run in float32 (eps 1.2e-7) the same products in different orders (BLAS blocking, softmax,
RMSNorm's mean). A dot product of length n <= d_ff = 24 is off by at most about n eps of its magnitude (Higham,
3.1), and two layers carry that to the logits (|logits| < 1 here): a few 1e-6 at worst, so atol 1e-5 holds with
room, while every adapter below moves the logits by more than 1e-3, a hundred times that.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from lora_helpers import batch, build_llama, logits, seeded, train_steps

from minipeft import to_numpy
from minipeft.peft import IA3Config, LoraConfig, PrefixTuningConfig, get_peft_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hf_peft = pytest.importorskip("peft")

ATOL = 1e-5   # float32, see the module docstring


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(7):
        yield


@pytest.fixture(scope="module")
def hf_base():
    """transformers' LlamaForCausalLM of the tiny config, holding build_llama(0)'s weights (eager attention)."""
    ours = build_llama(0)
    config = transformers.LlamaConfig(**ours.config.to_hf_dict())
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).float().eval()
    state = {n: torch.from_numpy(np.array(to_numpy(p.data))) for n, p in ours.named_parameters()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and missing == ["lm_head.weight"]        # tied: lm_head is embed_tokens
    return model


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def trained(config, steps: int = 3):
    """Our Llama with one adapter of `config`, trained a few steps so every adapter weight is off its init."""
    peft = get_peft_model(build_llama(0), config)
    train_steps(peft, *batch(1), steps=steps)
    return peft


def copy_adapter_into(ours, hf_model) -> None:
    """Set HF's adapter weights to ours, by name: `base_model.<path>` for a layer's, `prompt_encoder...` for a soft
    prompt's (held on the PeftModel itself in HF)."""
    theirs = dict(hf_model.named_parameters())
    mine = ours.base_model.adapter_parameters("default")
    for name, p in mine.items():
        key = f"base_model.{name}" if f"base_model.{name}" in theirs else name
        assert theirs[key].shape == p.shape, key
        theirs[key].data = torch.from_numpy(np.array(to_numpy(p.data)))
    assert len(mine) == sum(p.requires_grad for p in theirs.values())   # every trainable HF weight was set


def test_the_two_base_models_agree(hf_base):
    ids, _ = batch(0)
    np.testing.assert_allclose(logits(build_llama(0), ids), hf_logits(hf_base, ids), rtol=0, atol=ATOL)


@pytest.mark.parametrize("ours, theirs", [
    (lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
     lambda: hf_peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
    (lambda: IA3Config(), lambda: hf_peft.IA3Config()),        # both fill Llama's defaults: k, v, down_proj
    (lambda: PrefixTuningConfig(num_virtual_tokens=3),         # keys and values n_kv_head * head_dim wide
     lambda: hf_peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
], ids=["lora-q-v", "ia3-defaults", "prefix-tuning"])
def test_a_trained_adapter_gives_hugging_faces_logits(hf_base, ours, theirs):
    ids, _ = batch(0)
    peft = trained(ours())
    hf_model = hf_peft.get_peft_model(copy.deepcopy(hf_base), theirs())
    mine, theirs_config = peft.peft_config["default"], hf_model.peft_config["default"]
    assert sorted(getattr(theirs_config, "target_modules", None) or []) == sorted(getattr(mine, "target_modules",
                                                                                          None) or [])
    copy_adapter_into(peft, hf_model)
    hf_model.eval()
    out = logits(peft, ids)
    assert np.abs(out - logits(build_llama(0), ids)).max() > 1e-3       # the adapter does change the output
    np.testing.assert_allclose(out, hf_logits(hf_model, ids), rtol=0, atol=ATOL)
