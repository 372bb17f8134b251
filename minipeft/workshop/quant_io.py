"""Save and load a quantized GPT as one safetensors file: uint8 codes, int8/float scales, and what rebuilds it.

The file is a minipeft checkpoint (minipeft.workshop.checkpoint: atomic write, sha256 of the tensors checked on
load) whose tensors are the parameters as the quantized model holds them, e.g.
`blocks.0.attn.q_proj.weight` (uint8 codes), `.absmax` (int8 with double quantization), `.nested_absmax`,
`.offset`, `.bias`; the metadata adds `quantization_config` (the BitsAndBytesConfig) and
`quantized_modules` (each Linear4bit's path and settings), so `load_quantized(path)` rebuilds the same
layers and copies the arrays in, bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from minipeft import backend
from minipeft.nn.gpt import GPT, GPTConfig
from minipeft.nn.module import Module
from minipeft.quant.config import BitsAndBytesConfig
from minipeft.quant.linear4bit import Linear4bit
from minipeft.quant.quantize import quantized_layers
from minipeft.workshop.checkpoint import CheckpointError, load_into, read_metadata, read_tensors, save_checkpoint

QUANT_KEY = "quantized_modules"


def save_quantized(model: Module, path: str | os.PathLike) -> Path:
    """Write a quantized GPT (codes, scales, float parameters, config) to `path`, atomically."""
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("save_quantized: the model holds no Linear4bit layer; quantize_model() it first, or save "
                         "a float model with minipeft.workshop.checkpoint.save_checkpoint")
    config = getattr(model, "quantization_config", None)
    modules = {p: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                   "blocksize": m.blocksize, "double_quant": m.double_quant, "nested_blocksize": m.nested_blocksize,
                   "compute_dtype": np.dtype(m.compute_dtype).name} for p, m in layers.items()}
    meta = {QUANT_KEY: modules, "quantization_config": None if config is None else config.to_dict()}
    return save_checkpoint(model, path, extra_metadata=meta)


def load_quantized(path: str | os.PathLike) -> GPT:
    """The quantized GPT saved at `path` by save_quantized: same layers, same bytes."""
    meta = read_metadata(path)
    if QUANT_KEY not in meta:
        raise CheckpointError(f"{path} is a float checkpoint, not a quantized one; load it with "
                              "minipeft.workshop.checkpoint.load_checkpoint (and quantize_model it if you want 4 bits)")
    try:
        config = GPTConfig.from_dict(json.loads(meta["config"]))
        modules = json.loads(meta[QUANT_KEY])
        qcfg = json.loads(meta.get("quantization_config", "null"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: the stored model or quantization config is missing or invalid ({e}); "
                              "re-save it with save_quantized") from e
    tensors = read_tensors(path)
    floats = {a.dtype for a in tensors.values() if a.dtype.kind == "f"}
    with backend.fork_rng():     # the init GPT() draws is overwritten: keep the caller's generator unmoved
        backend.manual_seed(0)
        model = GPT(config)
        if len(floats) == 1:
            model.to(floats.pop())
        for p, s in modules.items():
            try:
                layer = Linear4bit(s["in_features"], s["out_features"], s["bias"], blocksize=s["blocksize"],
                                   double_quant=s["double_quant"], nested_blocksize=s["nested_blocksize"],
                                   compute_dtype=s["compute_dtype"])
                model.set_submodule(p, layer)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise CheckpointError(f"{path}: quantized module {p!r} cannot be rebuilt ({e}); re-save it with "
                                      "save_quantized") from e
    old = [p for p, s in modules.items()
           if s.get("double_quant") and getattr(tensors.get(f"{p}.absmax"), "dtype", None) == np.int8]
    if old:   # an earlier minipeft stored the scales in a uniform int8 code, which the dynamic map cannot read
        raise CheckpointError(f"{path}: {old[0]} holds double-quantized scales as int8, the uniform code of an "
                              "earlier minipeft; this one uses bitsandbytes' dynamic 8-bit map (uint8). Quantize the "
                              "float model again with quantize_model and save_quantized it")
    load_into(model, path, strict=True)
    if qcfg is not None:
        model.quantization_config = BitsAndBytesConfig.from_dict(qcfg)
    return model
