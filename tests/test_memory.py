"""minipeft.memory: a training step's bytes predicted from shapes agree with a measured step; the large-model
calculator reproduces the figures the LoRA and QLoRA papers publish."""

from __future__ import annotations

import numpy as np
import pytest

import minipeft as mp
from minipeft.memory import measure_step, param_bytes
from minipeft.nn.gpt import GPT, GPTConfig
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM
from minipeft.ops import head_loss
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.quant import BitsAndBytesConfig, quantize_model
from minipeft.workshop.compare.memory_large import LARGE_MODELS, PAPER_FIGURES, large_model_memory, weights_bytes
from minipeft.workshop.compare.memory_predict import predict_step

ALL = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
B, T = 4, 64
# The prediction counts array buffers; what it leaves out is the tape's Python objects (a Tensor, a node, an
# array header: ~100 bytes each, a few hundred per step) and the ops' small scratch, under 1% of the ~20 MB
# of arrays at these shapes. Weights, gradients and optimizer state are array sizes: equal exactly.
ACTIVATIONS_RTOL = 0.02
# The peak adds the head's backward (a chunk of the logits gradient, dh, a trained head's dW); full fine-tuning's
# embedding-gradient tables (2 x V x C), which the prediction leaves out, put its measured peak ~3% above.
PEAK_RTOL = 0.05

CASES = {
    "full, rope": ("rope", "full", None),
    "full, learned positions": ("learned", "full", None),
    "LoRA q,v": ("rope", LoraConfig(r=8, target_modules=["q_proj", "v_proj"]), None),
    "LoRA all, dropout": ("rope", LoraConfig(r=4, target_modules=ALL, lora_dropout=0.1), None),
    "LoRA last block fc2": ("learned", LoraConfig(r=8, target_modules=["fc2"], layers_to_transform=[3]), None),
    "QLoRA": ("rope", LoraConfig(r=8, target_modules=ALL), BitsAndBytesConfig(bnb_4bit_use_double_quant=True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_predicted_step_memory_matches_measured(name, keep_rng):
    positions, method, quant = CASES[name]
    mp.manual_seed(0)
    cfg = GPTConfig.from_preset("mini", position_embedding=positions)
    model = GPT(cfg)
    if quant is not None:
        quantize_model(model, quant)
    if method != "full":
        model = get_peft_model(model, method)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (B, T))
    y = np.where(np.arange(T) < T // 2, -100, x)                       # a fine-tuning batch: targets on half
    with mp.fast_ops(True):                                            # the prediction models the fast ops
        measured = measure_step(model, (x, y))
    predicted = predict_step(cfg, method, batch_size=B, seq_len=T, n_targets=int((y != -100).sum()),
                             quantization=quant)
    for part in ("weights", "gradients", "optimizer_state"):
        assert getattr(predicted, part) == getattr(measured, part), part
    assert predicted.activations == pytest.approx(measured.activations, rel=ACTIVATIONS_RTOL)
    assert predicted.peak == pytest.approx(measured.peak, rel=PEAK_RTOL)


def test_predicted_peak_counts_one_chunk_of_the_logits_gradient(monkeypatch):
    """The head's backward holds one chunk of (rows, V) logits: chunks of 16 of the 128 target rows take 7/8 of the
    logits gradient off the predicted peak; in one chunk the fast path keeps that block from the forward (in the
    activations), in several it keeps none."""
    cfg = GPTConfig.from_preset("mini", position_embedding="rope")
    n_targets, row_bytes = B * T // 2, cfg.vocab_size * 4
    steps = []
    for rows in (n_targets, 16):
        monkeypatch.setattr(head_loss, "CHUNK_BYTES", rows * row_bytes)
        steps.append(predict_step(cfg, "full", batch_size=B, seq_len=T, n_targets=n_targets))
    one, chunked = steps
    assert one.peak - chunked.peak == (n_targets - 16) * row_bytes
    assert one.activations - chunked.activations == n_targets * row_bytes


def test_lora_keeps_nothing_below_its_first_adapter():
    cfg = GPTConfig.from_preset("mini", position_embedding="rope")
    every = predict_step(cfg, LoraConfig(target_modules=["fc2"]), batch_size=B, seq_len=T)
    last = predict_step(cfg, LoraConfig(target_modules=["fc2"], layers_to_transform=[3]), batch_size=B, seq_len=T)
    full = predict_step(cfg, "full", batch_size=B, seq_len=T)
    assert last.activations < every.activations / 3 < full.activations / 3
    double = predict_step(cfg, "full", batch_size=2 * B, seq_len=T)
    assert double.activations == pytest.approx(2 * full.activations, rel=1e-9)   # every term scales with B


# The Llama: SmolLM2's structure (grouped-query attention of 3 query heads per key/value head, tied head) at a width
# and vocabulary small enough for a test step; the arrays of a step are ~16 MB.
LLAMA = dict(vocab_size=4096, context_length=64, d_model=96, n_layer=2, n_head=6, n_kv_head=2, d_ff=256)
LLAMA_B = 8
# measured - predicted: the tape's Python objects (Tensors, nodes, contexts, tuples: 12 to 50 KB for these two
# layers, the more ops the more) and the loss's integer bookkeeping per target row (indices, targets, mask: 25
# bytes each, 6 KB here), which the prediction leaves out. One (N, C) array is 196 KB, one rotary op's cos and
# sin 4 KB: the test beside this one catches those, from two lengths.
LLAMA_OVERHEAD = 64 * 1024
QLORA = BitsAndBytesConfig(bnb_4bit_use_double_quant=True)
LLAMA_CASES = {
    "full, tied": ({}, "full", None),
    "full, untied": ({"tie_embeddings": False}, "full", None),
    "full, a key/value head per query head (fast attention)": ({"n_kv_head": 6}, "full", None),
    "LoRA q,v": ({}, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]), None),
    "LoRA all-linear, untied": ({"tie_embeddings": False}, LoraConfig(r=4, target_modules="all-linear"), None),
    "LoRA all-linear, dropout": ({}, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1), None),
    "LoRA up, k": ({}, LoraConfig(r=4, target_modules=["up_proj", "k_proj"]), None),
    "LoRA last layer's down_proj": ({}, LoraConfig(r=8, target_modules=["down_proj"], layers_to_transform=[1]), None),
    "QLoRA all-linear": ({}, LoraConfig(r=8, target_modules="all-linear"), QLORA),
    "QLoRA q,v, untied": ({"tie_embeddings": False}, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]), QLORA),
}


def _llama_step(name: str, T: int, targets: int, B: int = LLAMA_B):
    """(measured, predicted) for one step of LLAMA_CASES[name] on B rows of T tokens, `targets` per row."""
    overrides, method, quant = LLAMA_CASES[name]
    mp.manual_seed(0)
    cfg = LlamaConfig(**{**LLAMA, **overrides})
    model = LlamaForCausalLM(cfg)
    if quant is not None:
        quantize_model(model, quant)
    if method != "full":
        model = get_peft_model(model, method)
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T))
    y = np.where(np.arange(T) < T - targets, -100, x)                   # targets on each row's last positions
    with mp.fast_ops(True):
        measured = measure_step(model, (x, y))
    return measured, predict_step(cfg, method, batch_size=B, seq_len=T, n_targets=B * targets, quantization=quant)


@pytest.mark.parametrize("T", [32, 64])
@pytest.mark.parametrize("name", list(LLAMA_CASES))
def test_predicted_llama_step_memory_matches_measured(name, T, keep_rng):
    """Weights (4-bit ones as held), gradients and Adam's state exactly; the activations and the peak up to
    LLAMA_OVERHEAD, never above the measured. Full fine-tuning peaks at the end of the backward with 32 tokens a
    row and at the head's backward with 64 (memory_predict_llama.py): both moments are held to the measured."""
    measured, predicted = _llama_step(name, T, T // 2)
    for part in ("weights", "gradients", "optimizer_state"):
        assert getattr(predicted, part) == getattr(measured, part), part
    for part in ("activations", "peak"):
        gap = getattr(measured, part) - getattr(predicted, part)
        assert 0 <= gap <= LLAMA_OVERHEAD, (part, gap)


@pytest.mark.parametrize("name", list(LLAMA_CASES))
def test_llama_prediction_grows_with_length_as_measured(name, keep_rng):
    """From 32 to 64 tokens a row, with the same targets, the activations grow by what the prediction says to
    within 1 KiB: both steps run the same ops, so the Python objects cancel and every term that grows with T
    (each (N, C), (N, F) and (T, T) array, each rotary op's (T, hs) cos and sin) is held to its byte count
    (what is left is Python's object sizes, which vary by a few bytes)."""
    (m32, p32), (m64, p64) = _llama_step(name, 32, 16), _llama_step(name, 64, 16)
    assert abs((m64.activations - m32.activations) - (p64.activations - p32.activations)) <= 1024


def test_llama_lora_on_few_tokens_keeps_no_folded_weight(keep_rng):
    """Below N (d + k) = d k tokens the fast LoRA op runs its two paths instead of folding W0 + s B A, and keeps no
    (d, k) weight for the backward: 8 tokens through 96-wide projections keep none of the 98 KB the fold would."""
    measured, predicted = _llama_step("LoRA q,v", 8, 4, B=1)
    assert 0 <= measured.activations - predicted.activations <= LLAMA_OVERHEAD


def test_measure_step_moves_no_weight(keep_rng):
    mp.manual_seed(0)
    model = GPT(GPTConfig.from_preset("test"))
    before = [p.numpy().copy() for p in model.parameters()]
    x = np.arange(32).reshape(2, 16) % 64
    m = measure_step(model, (x, x))
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, model.parameters(), strict=True))
    assert m.weights == param_bytes(model) and m.gradients == m.weights and m.optimizer_state == 2 * m.weights
    assert m.peak >= m.activations > 0 and m.total > m.weights + m.optimizer_state
    model.freeze()
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_step(model, (x, x))


def test_predict_step_names_bad_arguments():
    cfg = GPTConfig.from_preset("test")
    with pytest.raises(ValueError, match="'full' or a LoraConfig"):
        predict_step(cfg, "bitfit", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="n_targets"):
        predict_step(cfg, batch_size=1, seq_len=8, n_targets=9)
    with pytest.raises(ValueError, match="context_length"):
        predict_step(cfg, batch_size=1, seq_len=17)
    with pytest.raises(ValueError, match="bias"):
        predict_step(cfg, LoraConfig(target_modules=ALL, bias="all"), batch_size=1, seq_len=8)
    with pytest.raises(TypeError, match="GPTConfig or a LlamaConfig"):
        predict_step(dict(LLAMA), batch_size=1, seq_len=8)
    llama = LlamaConfig(**LLAMA)
    with pytest.raises(ValueError, match="adapt no layer linear"):
        predict_step(llama, LoraConfig(target_modules=["fc1"]), batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="lm_head"):
        untied = LlamaConfig(**{**LLAMA, "tie_embeddings": False})
        predict_step(untied, LoraConfig(target_modules=["q_proj", "lm_head"]), batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="llm_int8_skip_modules"):
        predict_step(llama, LoraConfig(), batch_size=1, seq_len=8,
                     quantization=BitsAndBytesConfig(llm_int8_skip_modules=["lm_head", "down_proj"]))
    with pytest.raises(ValueError, match="context_length"):
        predict_step(llama, batch_size=1, seq_len=65)


# ---- large models, from their dimensions ---------------------------------------------------------------------
def test_large_model_parameter_counts():
    # published sizes: LLaMA 6.7B / 13.0B / 65.2B, GPT-3 175B (1.3B for GPT-3 XL)
    for name, (lo, hi) in {"LLaMA-7B": (6.7e9, 6.8e9), "LLaMA-13B": (12.9e9, 13.1e9), "LLaMA-65B": (65.0e9, 65.4e9),
                           "GPT-3 175B": (174e9, 176e9), "GPT-3 XL 1.3B": (1.2e9, 1.4e9)}.items():
        assert lo < LARGE_MODELS[name].n_params() < hi, name


def test_qlora_paper_65b_figures():
    full = large_model_memory("LLaMA-65B", "full")
    persistent = full.weights + full.gradients + full.optimizer_state          # 12 bytes per parameter
    assert persistent == 12 * LARGE_MODELS["LLaMA-65B"].n_params()
    assert persistent / 1e9 == pytest.approx(PAPER_FIGURES["qlora_65b_full_gb"][0], rel=0.01)   # ">780GB"
    qlora = large_model_memory("LLaMA-65B", "qlora", r=64)
    assert qlora.total / 1e9 < PAPER_FIGURES["qlora_65b_qlora_gb"][0]                           # "a 48GB GPU"
    assert large_model_memory("LLaMA-65B", "lora", r=64).total / 1e9 > 130                     # 16-bit LoRA: no
    # double quantization saves "approximately 3 GB for a 65B model" (QLoRA section 1)
    saved = weights_bytes(LARGE_MODELS["LLaMA-65B"], "nf4") - weights_bytes(LARGE_MODELS["LLaMA-65B"], "nf4+dq")
    assert 2.9e9 < saved < 3.1e9


def test_lora_paper_175b_figures():
    gpt3 = LARGE_MODELS["GPT-3 175B"]
    assert weights_bytes(gpt3, "bf16") / 1e9 == pytest.approx(PAPER_FIGURES["lora_175b_lora_gb"][0], rel=0.01)
    lora = large_model_memory(gpt3, "lora", r=4, targets=("q", "v"))
    assert lora.total / 1e9 == pytest.approx(PAPER_FIGURES["lora_175b_lora_gb"][0], rel=0.02)
    # the checkpoint "35MB": 18.9M adapter parameters in 16 bits = 37.7 MB (36.0 MiB)
    assert lora.adapters / 2**20 == pytest.approx(PAPER_FIGURES["lora_175b_checkpoint_mb"][0], rel=0.05)


def test_large_model_memory_names_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        large_model_memory("LLaMA-7B", "bitfit")
    with pytest.raises(ValueError, match="unknown large model"):
        large_model_memory("LLaMA-8B", "full")
    with pytest.raises(ValueError, match="not among its matrices"):
        large_model_memory("LLaMA-7B", "lora", targets=("fc1",))
    with pytest.raises(ValueError, match="unknown format"):
        weights_bytes(LARGE_MODELS["LLaMA-7B"], "int8")
