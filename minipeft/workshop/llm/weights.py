"""Weights of a Llama-family model from a GGUF file or a Hugging Face folder, in transformers' names and layout.

GGUF (llama.cpp's format) names tensors its own way (`blk.0.attn_q.weight`) and stores the rows of q_proj and
k_proj permuted for llama.cpp's rotary layout, which turns adjacent channel pairs (2i, 2i + 1); transformers and
this project turn the pairs (i, i + head_dim / 2) ("rotate half"). llama.cpp's converter applied, per head,

    W.reshape(n_heads, 2, head_dim / 2, C).swapaxes(1, 2).reshape(W.shape)     (half-split -> interleaved)

so loading undoes it with the inverse reshape, and q_proj / k_proj then equal the Hugging Face checkpoint's rows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from minipeft import backend
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM

# GGUF tensor name -> transformers' parameter name ({i} is the layer)
GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q_proj / k_proj rows (see the module docstring)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (what a GGUF file holds), the inverse of interleaved_to_half."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(metadata: dict, n_vocab: int | None = None) -> LlamaConfig:
    """LlamaConfig from a GGUF file's `llama.*` metadata."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF: general.architecture is {arch!r}; only 'llama' models load here")

    def get(key: str):
        if f"llama.{key}" not in metadata:
            raise ValueError(f"GGUF: metadata lacks llama.{key}, which a Llama model needs")
        return metadata[f"llama.{key}"]

    def f32(value) -> float:   # GGUF stores these as float32: the shortest decimal that reads back to it (1e-05)
        return float(str(np.float32(value)))

    n_head = int(get("attention.head_count"))
    vocab = n_vocab or metadata.get("llama.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", ()))
    return LlamaConfig(vocab_size=int(vocab), context_length=int(get("context_length")),
                       d_model=int(get("embedding_length")), n_layer=int(get("block_count")), n_head=n_head,
                       n_kv_head=int(metadata.get("llama.attention.head_count_kv", n_head)),
                       d_ff=int(get("feed_forward_length")), rope_base=f32(metadata.get("llama.rope.freq_base", 1e4)),
                       rms_norm_eps=f32(get("attention.layer_norm_rms_epsilon")),
                       tie_embeddings=False)   # set by the caller from whether output.weight exists


def hf_state_from_gguf(tensors: dict[str, np.ndarray], cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """GGUF tensors renamed to transformers' names, q_proj / k_proj rows back in the rotate-half layout."""
    names = {}
    for i in range(cfg.n_layer):
        names.update({g.format(i=i): h.format(i=i) for g, h in GGUF_NAMES.items() if "{i}" in g})
    names.update({g: h for g, h in GGUF_NAMES.items() if "{i}" not in g})
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise ValueError(f"GGUF: tensors {unknown[:5]} are not part of a {cfg.n_layer}-layer Llama model")
    state = {}
    for g, w in tensors.items():
        h = names[g]
        if h.endswith("q_proj.weight"):
            w = interleaved_to_half(w, cfg.n_head)
        elif h.endswith("k_proj.weight"):
            w = interleaved_to_half(w, cfg.n_kv_head)
        state[h] = w
    return state


def llama_from_state(state: dict[str, np.ndarray], cfg: LlamaConfig, source: str) -> LlamaForCausalLM:
    """A LlamaForCausalLM holding `state` (transformers' names); every parameter must be there, in its shape."""
    with backend.fork_rng():   # the random initial weights are overwritten: keep the caller's generator where it was
        backend.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    if cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    own = dict(model.named_parameters())
    dtypes = {str(w.dtype) for w in state.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in ("float32", "float64"):
        raise ValueError(f"{source}: the weights must all be float32 or all float64, got {sorted(dtypes)}")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: the weights do not fit a Llama of this config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, p in own.items():
        w = state[name]
        if tuple(w.shape) != tuple(p.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(w.shape)}, the config needs {tuple(p.shape)}")
        p.data = backend.xp().asarray(w)            # the file's values in the dtype they were read as
    return model


def llama_from_gguf(metadata: dict, tensors: dict[str, np.ndarray], source: str = "GGUF") -> LlamaForCausalLM:
    """The model of a GGUF file's metadata and (dequantized) tensors."""
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ValueError(f"{source}: no token_embd.weight tensor; is this a Llama GGUF file?")
    cfg = config_from_gguf(metadata, n_vocab=emb.shape[0])
    cfg.tie_embeddings = "output.weight" not in tensors
    return llama_from_state(hf_state_from_gguf(tensors, cfg), cfg, source)


def bf16_to_float32(raw: bytes, shape) -> np.ndarray:
    """bfloat16 is float32's upper 16 bits: widen each by 16 zero bits (exact; NumPy has no bfloat16 type)."""
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def read_safetensors(path: Path, dtype) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as `dtype`; bfloat16 ones (how the hub ships SmolLM2) widened exactly."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="np") as f:
        bf16 = [k for k in f.keys() if f.get_slice(k).get_dtype() == "BF16"]
        out = {k: f.get_tensor(k).astype(dtype) for k in f.keys() if k not in bf16}
    if bf16:   # their bytes, from the offsets in the file's JSON header (8-byte length, header, data)
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header, base = json.loads(fh.read(n)), 8 + n
            for k in bf16:
                start, end = header[k]["data_offsets"]
                fh.seek(base + start)
                out[k] = bf16_to_float32(fh.read(end - start), header[k]["shape"]).astype(dtype)
    return out


def llama_from_hf_folder(folder: str | Path, dtype=np.float32) -> LlamaForCausalLM:
    """The model of a Hugging Face folder: config.json + model.safetensors (transformers' names)."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; a Hugging Face model folder holds config.json, "
                                    "model.safetensors and tokenizer.json (sharded checkpoints are not supported)")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / 'config.json'}: not valid JSON ({e})") from None
    cfg = LlamaConfig.from_hf_dict(hf)
    state = read_safetensors(folder / "model.safetensors", dtype)
    if not cfg.tie_embeddings and "lm_head.weight" not in state:
        raise ValueError(f"{folder}: tie_word_embeddings is false but model.safetensors has no lm_head.weight")
    return llama_from_state(state, cfg, str(folder))


def gguf_from_llama(model: LlamaForCausalLM) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors) of a GGUF file holding `model` as llama.cpp's converter writes one (rotary rows
    interleaved, llama.cpp's names), without the tokenizer's metadata; the inverse of llama_from_gguf."""
    cfg = model.config
    metadata = {"general.architecture": "llama", "llama.block_count": cfg.n_layer,
                "llama.context_length": cfg.context_length, "llama.embedding_length": cfg.d_model,
                "llama.feed_forward_length": cfg.d_ff, "llama.attention.head_count": cfg.n_head,
                "llama.attention.head_count_kv": cfg.n_kv_head, "llama.rope.freq_base": float(cfg.rope_base),
                "llama.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps), "llama.vocab_size": cfg.vocab_size,
                "llama.rope.dimension_count": cfg.head_dim}
    to_gguf = {}
    for g, h in GGUF_NAMES.items():
        for i in range(cfg.n_layer) if "{i}" in g else [None]:
            to_gguf[h.format(i=i)] = g.format(i=i)
    tensors = {}
    for name, p in model.named_parameters():
        w = np.array(backend.to_numpy(p.data), copy=True)
        if name.endswith("q_proj.weight"):
            w = half_to_interleaved(w, cfg.n_head)
        elif name.endswith("k_proj.weight"):
            w = half_to_interleaved(w, cfg.n_kv_head)
        tensors[to_gguf[name]] = w
    return metadata, tensors


def save_hf_folder(model: LlamaForCausalLM, tokenizer, folder: str | Path) -> Path:
    """Write `model` and its tokenizer as a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json) in one crash-safe unit: what transformers' from_pretrained and load_pretrained read."""
    from minipeft.io_utils import safetensors_bytes, write_files_as_unit

    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"save_hf_folder: model must be a LlamaForCausalLM (a merged model: merge_and_unload()), got "
                        f"{type(model).__name__}")
    folder = Path(folder)
    tensors = {k: np.ascontiguousarray(backend.to_numpy(p.data)) for k, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:   # the tokenizer's own files, to put in the unit
        tokenizer.save(tmp)
        files = {name.name: name.read_bytes() for name in Path(tmp).iterdir() if not name.name.startswith(".")}
    files["config.json"] = json.dumps({**model.config.to_hf_dict(), "torch_dtype": str(next(iter(
        tensors.values())).dtype)}, indent=2).encode()
    files["model.safetensors"] = safetensors_bytes(tensors, {"format": "pt"})
    write_files_as_unit(folder, files)
    return folder
