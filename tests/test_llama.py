"""The Llama model (nn/llama.py) on a tiny random config: shapes, causality, the KV cache, prefixes, gradients,
the config's checks, and transformers' LlamaForCausalLM as the reference where it is installed."""

from __future__ import annotations

import numpy as np
import pytest
from llama_helpers import TINY, as_numpy, build_llama

from minipeft import Tensor, no_grad, to_numpy
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM

V = TINY["vocab_size"]


def test_parameter_count_is_the_closed_form():
    """Per layer: q, o (C x C), k, v (C x Ckv), gate, up, down (3 C F), two norms (2 C); embedding V C; norm C."""
    cfg = LlamaConfig(**TINY)
    C, F, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    Ckv = cfg.n_kv_head * cfg.head_dim
    per_layer = 2 * C * C + 2 * C * Ckv + 3 * C * F + 2 * C
    assert build_llama().num_parameters() == L * per_layer + V * C + C
    assert build_llama(tie_embeddings=False).num_parameters() == L * per_layer + 2 * V * C + C


def test_smollm2_135m_shape_has_its_published_parameter_count():
    """The default LlamaConfig is SmolLM2-135M's: 134,515,008 parameters (the GGUF file's count), by formula."""
    cfg = LlamaConfig()
    C, F, L, Ckv = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.n_kv_head * cfg.head_dim
    assert L * (2 * C * C + 2 * C * Ckv + 3 * C * F + 2 * C) + cfg.vocab_size * C + C == 134_515_008


def test_module_names_are_transformers_names():
    names = {n for n, _ in build_llama().named_parameters()}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight"} <= names
    assert "lm_head.weight" not in names                       # tied: the head reads embed_tokens
    assert "lm_head.weight" in {n for n, _ in build_llama(tie_embeddings=False).named_parameters()}


def test_later_tokens_leave_earlier_logits_unchanged():
    model = build_llama(dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, V, (2, 7))
    other = ids.copy()
    other[:, 4:] = (other[:, 4:] + 1) % V
    with no_grad():
        a, b = as_numpy(model(ids)[0]), as_numpy(model(other)[0])
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_kv_cache_chunks_equal_one_full_forward():
    model = build_llama(dtype=np.float64)
    ids = np.random.default_rng(1).integers(0, V, (2, 9))
    with no_grad():
        full = as_numpy(model(ids)[0])
        cache = model.new_kv_cache()
        pieces = [as_numpy(model(ids[:, lo:hi], kv_cache=cache)[0]) for lo, hi in ((0, 4), (4, 5), (5, 9))]
    # float64: the same arithmetic up to summation order (~1e-15)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-10)
    assert cache.length == 9 and cache.k[0].shape == (2, 9, model.kv_width)


def test_positions_follow_a_prefix_as_in_transformers():
    """With a prefix of P keys/values, tokens sit at positions P..P+T-1 (transformers' cache_position): the same
    as running P tokens whose keys and values ARE the prefix first. Built by taking a real run's cache."""
    model = build_llama(dtype=np.float64)
    ids = np.random.default_rng(2).integers(0, V, (1, 8))
    with no_grad():
        full = as_numpy(model(ids)[0])
        cache = model.new_kv_cache()
        model(ids[:, :3], kv_cache=cache)
        prefix = [(cache.k[i], cache.v[i]) for i in range(model.config.n_layer)]
        rest = as_numpy(model(ids[:, 3:], prefix_kv=prefix)[0])
    np.testing.assert_allclose(rest, full[:, 3:], rtol=0, atol=1e-10)


def test_whole_model_gradients_match_central_differences():
    """4 random elements of every float64 parameter against central differences (bound as in test_gpt's check:
    eps = 1e-5 gives a numerical gradient good to ~1e-9; relative 1e-6 on top)."""
    model = build_llama(seed=3, dtype=np.float64)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, V, (2, 5)), rng.integers(0, V, (2, 5))
    model(ids, targets)[1].backward()

    def f() -> float:
        with no_grad():
            return model(ids, targets)[1].item()

    for name, p in model.named_parameters():
        grad, flat = to_numpy(p.grad).reshape(-1), p.data.reshape(-1)
        for i in rng.choice(flat.size, 4, replace=False):
            old = flat[i]
            flat[i] = old + 1e-5
            fp = f()
            flat[i] = old - 1e-5
            fm = f()
            flat[i] = old
            num = (fp - fm) / 2e-5
            assert abs(grad[i] - num) <= 1e-9 + 1e-6 * abs(num), f"{name}[{i}]: {grad[i]!r} vs {num!r}"


@pytest.mark.parametrize("field, value, message", [
    ("n_kv_head", 4, "multiple of n_kv_head=4"),
    ("n_head", 5, "heads of even size"),
    ("rms_norm_eps", 0.0, "rms_norm_eps must be a number > 0.0"),
    ("d_ff", 0, "d_ff must be a positive int"),
])
def test_config_refuses_bad_fields_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**TINY, field: value})


def test_hf_config_round_trip_and_refusals():
    cfg = LlamaConfig(**TINY)
    assert LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    untied = {k: v for k, v in cfg.to_hf_dict().items() if k != "tie_word_embeddings"}
    assert not LlamaConfig.from_hf_dict(untied).tie_embeddings      # transformers' default when the key is absent
    with pytest.raises(ValueError, match="rope_scaling="):
        LlamaConfig.from_hf_dict({**cfg.to_hf_dict(), "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type is 'gpt2'"):
        LlamaConfig.from_hf_dict({**cfg.to_hf_dict(), "model_type": "gpt2"})


def test_model_refuses_a_gpt_config_and_too_long_input():
    from minipeft.nn import GPTConfig
    with pytest.raises(TypeError, match="needs a LlamaConfig"):
        LlamaForCausalLM(GPTConfig())
    with pytest.raises(ValueError, match="exceeds the context length 32"):
        build_llama()(np.zeros((1, 33), dtype=np.int64))


# ---- transformers' LlamaForCausalLM as the reference ------------------------------------------------------
# transformers' rotary embedding forms inv_freq and position * inv_freq in float32 whatever the model's dtype, so
# its angles are off by up to p * 2^-24 rad (p <= 10 here: 6e-7), which moves q and k, and so logits of size ~10,
# by ~1e-6 relative; ours are computed in float64. 1e-5 covers that with margin; a wrong formula is off by O(1).
HF_ROPE_TOL = 1e-5

def hf_twin(model: LlamaForCausalLM):
    """transformers' LlamaForCausalLM with the same config and weights (our names are its names)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlamaConfig(**model.config.to_hf_dict())
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).to(torch.float64).eval()
    state = {k: torch.from_numpy(as_numpy(p)) for k, p in model.named_parameters()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return hf, torch


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_transformers_llama(tie):
    """Same config, same float64 weights: transformers' logits. Not to float64 rounding: transformers computes the
    rotary angles in float32 even for a float64 model (HF_ROPE_TOL)."""
    model = build_llama(seed=4, dtype=np.float64, tie_embeddings=tie)
    hf, torch = hf_twin(model)
    ids = np.random.default_rng(4).integers(0, V, (2, 11))
    with no_grad():
        ours = as_numpy(model(ids)[0])
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(ref).max() > 1                      # the weights are scaled up enough for logits to matter
    np.testing.assert_allclose(ours, ref, rtol=0, atol=HF_ROPE_TOL)


def test_gradients_equal_transformers_llama():
    """The loss's gradient of every parameter equals torch autograd's through transformers' model (float64)."""
    model = build_llama(seed=5, dtype=np.float64)
    hf, torch = hf_twin(model)
    rng = np.random.default_rng(5)
    ids, targets = rng.integers(0, V, (2, 6)), rng.integers(0, V, (2, 6))
    model(ids, targets)[1].backward()
    logits = hf(torch.from_numpy(ids)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1)).backward()
    ref = dict(hf.named_parameters())
    for name, p in model.named_parameters():   # relative to the tensor's largest entry: small entries share its error
        want = ref[name].grad.numpy()
        np.testing.assert_allclose(to_numpy(p.grad), want, rtol=0, atol=HF_ROPE_TOL * np.abs(want).max(), err_msg=name)


def test_tensor_inputs_embeds_path_equals_ids_path():
    model = build_llama(dtype=np.float64)
    ids = np.random.default_rng(6).integers(0, V, (1, 5))
    with no_grad():
        a = as_numpy(model(ids)[0])
        emb = model.get_input_embeddings()(ids)
        b = as_numpy(model(inputs_embeds=Tensor(as_numpy(emb)))[0])
    np.testing.assert_array_equal(a, b)


# ---- a Hugging Face folder, as transformers writes it -------------------------------------------------------
@pytest.mark.parametrize("torch_dtype", ["float32", "bfloat16"])
def test_hf_folder_written_by_transformers_loads_with_the_same_weights(tmp_path, torch_dtype):
    """save_pretrained's config.json + model.safetensors load back bit for bit (bfloat16 widened exactly)."""
    from minipeft.workshop.llm.weights import llama_from_hf_folder

    model = build_llama(seed=7)
    hf, torch = hf_twin(model)
    hf.to(getattr(torch, torch_dtype)).save_pretrained(tmp_path)
    loaded = llama_from_hf_folder(tmp_path)
    want = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    for name, p in loaded.named_parameters():
        np.testing.assert_array_equal(as_numpy(p), want[name], err_msg=name)
    assert loaded.config == model.config


def test_hf_folder_errors_name_the_file(tmp_path):
    from minipeft.workshop.llm.weights import llama_from_hf_folder

    with pytest.raises(FileNotFoundError, match="no config.json"):
        llama_from_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        llama_from_hf_folder(tmp_path)


def test_gguf_rotary_permutation_round_trips_and_is_per_head():
    """llama.cpp's interleaving and its inverse are inverse; rows stay within their head."""
    from minipeft.workshop.llm.weights import half_to_interleaved, interleaved_to_half

    w = np.arange(3 * 8 * 2, dtype=np.float64).reshape(3 * 8, 2)           # 3 heads of 8 rows
    g = half_to_interleaved(w, 3)
    np.testing.assert_array_equal(interleaved_to_half(g, 3), w)
    # head 0's rows (i, i + 4) of the half layout become adjacent rows (2i, 2i + 1)
    np.testing.assert_array_equal(g[:8:2], w[:4])
    np.testing.assert_array_equal(g[1:8:2], w[4:8])
    np.testing.assert_array_equal(np.sort(g[8:16].ravel()), np.sort(w[8:16].ravel()))


# ---- GGUF: the tiny model written as llama.cpp writes one, read back -----------------------------------------
@pytest.mark.parametrize("quantized", [False, True])
def test_gguf_file_of_a_tiny_llama_loads_back(tmp_path, quantized):
    """Written with llama.cpp's names and rotary rows, read back: F32 bit for bit; with the real file's types
    (Q4_1 matrices, Q8_0 embedding, F32 norms) equal to what the blocks dequantize to, so the logits follow."""
    from minipeft.workshop.llm.gguf_file import read_gguf, write_gguf
    from minipeft.workshop.llm.weights import gguf_from_llama, llama_from_gguf

    model = build_llama(seed=8, d_model=32, n_head=4, n_kv_head=2, d_ff=64)   # Q4_1 needs rows of 32
    metadata, tensors = gguf_from_llama(model)
    types = {}
    if quantized:
        types = {k: ("Q8_0" if k == "token_embd.weight" else "Q4_1") for k, v in tensors.items() if v.ndim == 2}
    write_gguf(tmp_path / "tiny.gguf", metadata, tensors, types)
    f = read_gguf(tmp_path / "tiny.gguf")
    loaded = llama_from_gguf(f.metadata, f.tensors)
    assert loaded.config == model.config
    ours = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        if quantized and p.ndim == 2:
            # Q4_1: 16 levels over each block of 32's [min, max]: error <= (max - min) / 30 <= |w|max / 15
            bound = np.abs(as_numpy(ours[name])).max() / 15
            assert np.abs(as_numpy(p) - as_numpy(ours[name])).max() <= bound, name
        else:
            np.testing.assert_array_equal(as_numpy(p), as_numpy(ours[name]), err_msg=name)
    ids = np.random.default_rng(8).integers(0, V, (1, 6))
    with no_grad():
        a, b = as_numpy(model(ids)[0]), as_numpy(loaded(ids)[0])
    if not quantized:
        np.testing.assert_array_equal(a, b)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= (0.5 if quantized else 1.0)
