"""Save and load GPT weights as safetensors (no pickle), the config kept in the file's metadata.

The file holds one tensor per parameter (a tied weight once, under its first name) and string
metadata `{"format": "minipeft", "model_class": "GPT", "config": <json>, ...}`, so
`load_checkpoint(path)` can rebuild the model from the file alone. Writes are atomic, and the hidden
temp file a killed save leaves beside `path` is removed by the next save or load of `path`.

safetensors has no checksum of its own, so the metadata also holds `tensors_sha256`, a sha256 of the
tensors (names, dtypes, shapes, bytes), checked on every load: flipped bytes raise instead of loading.
A file without it (written by an older minipeft, or by another tool) still loads, unchecked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from minipeft import backend
from minipeft.errors import CheckpointError
from minipeft.io_utils import (
    CHECKSUM_KEY,
    ChecksumMismatch,
    atomic_write_bytes,
    check_folder_path,
    read_checked_tensors,
    remove_stale_temps,
    tensors_sha256,
)
from minipeft.nn.gpt import GPT, GPTConfig
from minipeft.nn.module import Module

FORMAT = "minipeft"


def save_checkpoint(model: Module, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write every parameter of `model` and its config to a safetensors file at `path`, atomically."""
    check_folder_path(path, "save_checkpoint")
    if hasattr(model, "peft_config"):
        raise TypeError(f"save_checkpoint: got a {type(model).__name__} (a base model with adapters); save the "
                        "adapter alone with model.save_pretrained(directory), or fold it into the base with "
                        "merged = model.merge_and_unload() and save_checkpoint(merged, path)")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"save_checkpoint: {type(model).__name__} has no .config with to_dict(); "
                        "it saves GPT models (use safetensors directly for other modules)")
    if "quantized_modules" not in (extra_metadata or {}) and any(p.dtype.kind != "f" for p in model.parameters()):
        raise TypeError("save_checkpoint: this model holds 4-bit quantized layers (integer codes), which "
                        "load_checkpoint could not rebuild; save it with "
                        "minipeft.workshop.quant_io.save_quantized(model, path)")
    tensors = {name: np.ascontiguousarray(backend.to_numpy(p.data)) for name, p in model.named_parameters()}
    meta = {"format": FORMAT, "model_class": type(model).__name__, "config": json.dumps(config.to_dict()),
            CHECKSUM_KEY: tensors_sha256(tensors)}
    for k, v in (extra_metadata or {}).items():
        if k in meta:
            raise ValueError(f"save_checkpoint: extra_metadata key {k!r} is reserved; rename it")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    # bytes first, then our own temp file: safetensors' save_file keeps a temp of its own that a kill would leave
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a minipeft checkpoint (raises CheckpointError for other files)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own (Rust) error types for bad headers
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); it may be truncated or "
                              "corrupted: re-save it with save_checkpoint") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a minipeft checkpoint (metadata format="
                              f"{meta.get('format')!r}); write it with minipeft.workshop.checkpoint.save_checkpoint, "
                              "or read the tensors with safetensors.numpy.load_file and load_state_dict")
    return meta


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as NumPy arrays, checked against the stored checksum if there is one."""
    path = _existing(path)
    try:
        tensors, _ = read_checked_tensors(path)
    except ChecksumMismatch as e:
        raise CheckpointError(f"{e}: re-save it with save_checkpoint, or restore it from a copy") from None
    except Exception as e:  # safetensors raises its own (Rust) error types for bad headers
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); it may be truncated or "
                              "corrupted: re-save it with save_checkpoint") from e
    return tensors


def load_checkpoint(path: str | os.PathLike) -> GPT:
    """Build the GPT described by the checkpoint's config and load its weights (dtype as saved)."""
    meta = read_metadata(path)
    if meta.get("model_class", "GPT") != "GPT":
        raise CheckpointError(f"{path} holds a {meta['model_class']}, not a GPT; build that model yourself and "
                              "call load_into(model, path)")
    if "quantized_modules" in meta:
        raise CheckpointError(f"{path} holds a 4-bit quantized GPT; load it with minipeft.quant.load_quantized(path)")
    config = _config_of(path, meta)
    tensors = read_tensors(path)
    # building draws random init weights; use a private generator so the caller's stream is unchanged
    saved_rng = backend._state["rng"]
    backend.manual_seed(0)
    try:
        model = GPT(config)
    finally:
        backend._state["rng"] = saved_rng
    dtypes = {a.dtype for a in tensors.values() if a.dtype.kind == "f"}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    _load(model, tensors, path, strict=True, saved_config=config)
    return model


def load_into(model: Module, path: str | os.PathLike, strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy the checkpoint's weights into an existing model; returns (missing, unexpected) names.

    strict=True requires exactly the model's parameter names; a shape mismatch always raises.
    """
    meta = read_metadata(path)
    saved = _config_of(path, meta) if "config" in meta else None
    return _load(model, read_tensors(path), path, strict=strict, saved_config=saved)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass the checkpoint file inside it")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path, or train a model and "
                                "write it with save_checkpoint(model, path)")
    try:
        remove_stale_temps(path)  # what a killed save left beside it
    except OSError:
        pass                      # a read-only folder: reading must still work
    return path


def _config_of(path, meta: dict[str, str]) -> GPTConfig:
    try:
        return GPTConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: the stored model config is missing or invalid ({e}); re-save the "
                              "checkpoint with save_checkpoint") from e


def _config_diff(saved: GPTConfig | None, model: Module) -> str:
    cfg = getattr(model, "config", None)
    if saved is None or cfg is None or not hasattr(cfg, "to_dict"):
        return ""
    a, b = saved.to_dict(), cfg.to_dict()
    diff = [f"{k}: checkpoint {a.get(k)!r} vs model {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return f" (config differs: {'; '.join(diff)})" if diff else ""


def _load(model: Module, tensors: dict[str, np.ndarray], path, strict: bool,
          saved_config: GPTConfig | None) -> tuple[list[str], list[str]]:
    params = dict(model.named_parameters())
    missing = [k for k in params if k not in tensors]
    unexpected = [k for k in tensors if k not in params]
    bad_shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {params[k].shape}"
                  for k in params if k in tensors and tuple(tensors[k].shape) != params[k].shape]
    if bad_shapes or (strict and (missing or unexpected)):
        why = []
        if bad_shapes:
            why.append(f"shape mismatch {bad_shapes[:4]}{' ...' if len(bad_shapes) > 4 else ''}")
        if strict and missing:
            why.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if strict and unexpected:
            why.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {', '.join(why)}"
                              f"{_config_diff(saved_config, model)}; build the model from the checkpoint's config "
                              "with load_checkpoint(path), or pass strict=False to load the matching subset")
    model.load_state_dict({k: v for k, v in tensors.items() if k in params}, strict=False)
    return missing, unexpected
