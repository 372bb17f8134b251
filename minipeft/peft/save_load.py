"""Adapter files in Hugging Face PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Works for every registered method from what it declares (its adapter slots): keys are named as
PEFT names them, `base_model.model.<module path>.lora_A.weight` (the adapter name is dropped on disk
and put back on load), and a `modules_to_save` copy under its module's own path,
`base_model.model.<module path>.weight`. The config records a fingerprint of every base-model
parameter so an adapter is not silently loaded onto a base it was not trained on.

A folder is replaced as a unit (`minipeft.io_utils.write_files_as_unit`): both files are staged, a
small commit marker is written, then both are renamed into place. A save killed at any moment leaves
the folder holding one whole save (the old one, or the new one once the next read or write finishes
the committed renames), never the config of one save beside the weights of another; the finished
folder holds exactly Hugging Face's two files, plus any `extra_files` the caller saves with the adapter
in the same unit (the CLI's run record). The same adapter always saves to the same bytes, so folders can be
compared by hash. (A reader other than minipeft, such as Hugging Face
PEFT, opening a folder whose killed save was committed but not finished could still see the mix, until
minipeft next reads or writes that folder.) The weights file's metadata carries a sha256 of its
tensors, checked on load; a file without one (written by Hugging Face PEFT or an older minipeft)
loads unchecked, as safetensors itself has no checksum.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
from safetensors import SafetensorError, safe_open

from minipeft import backend
from minipeft.errors import AdapterError, ConfigError
from minipeft.io_utils import (
    CHECKSUM_KEY,
    ChecksumMismatch,
    read_checked_tensors,
    recover_files,
    safetensors_bytes,
    staged_names,
    tensors_sha256,
    write_files_as_unit,
)
from minipeft.nn.module import Module, Parameter
from minipeft.peft.registry import config_from_dict
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def base_named_parameters(module: Module, prefix: str = "", seen: set[int] | None = None):
    """(name, Parameter) of the base model only, named as in the model without adapters.

    Inside an adapter wrapper only the wrapped base module counts (`q_proj.base_layer.weight` is named
    `q_proj.weight`; a modules_to_save wrapper's original module likewise), so a method's own weights,
    whichever method, never enter; every base parameter does, 1-D ones (biases, LayerNorm) included.
    """
    seen = set() if seen is None else seen
    if isinstance(module, BaseTunerLayer):
        yield from base_named_parameters(module.get_base_layer(), prefix, seen)
        return
    if isinstance(module, ModulesToSaveWrapper):
        yield from base_named_parameters(module.original_module, prefix, seen)
        return
    for name, p in vars(module).items():
        if isinstance(p, Parameter) and id(p) not in seen:
            seen.add(id(p))
            yield (f"{prefix}.{name}" if prefix else name), p
    for name, child in module.named_children():
        yield from base_named_parameters(child, f"{prefix}.{name}" if prefix else name, seen)


def fingerprint(model: Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every base-model parameter (first 16 hex digits)."""
    return tensors_sha256({name: backend.to_numpy(p.data) for name, p in base_named_parameters(model)})[:16]


def adapter_dir(root: str, name: str) -> str:
    """PEFT's layout: the 'default' adapter at the root, others in a subfolder named after them."""
    return root if name == "default" else os.path.join(root, name)


def adapter_keys(peft_model, name: str) -> dict[str, str]:
    """{key on disk: live parameter name of the PeftModel} for everything adapter `name` owns, as the method
    declares it (BaseTuner.adapter_file_keys: `base_model.<path>.lora_A.weight`, soft prompts' `prompt_embeddings`)."""
    try:
        keys = peft_model.base_model.adapter_file_keys(name)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    return {disk: f"base_model.{live}" for disk, live in keys.items()}


def adapter_state_dict(peft_model, name: str) -> dict[str, np.ndarray]:
    """The arrays adapter `name` owns, keyed as on disk (BaseTuner.adapter_file_arrays)."""
    try:
        arrays = peft_model.base_model.adapter_file_arrays(name)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    return {disk: backend.to_numpy(a) for disk, a in arrays.items()}


def save_adapters(peft_model, root: str, selected: list[str] | None = None,
                  extra_files: dict[str, bytes] | None = None) -> None:
    """Write each selected adapter's config and weights; each adapter folder is replaced as a unit.

    extra_files {name: bytes} are written into `root` in the same unit as the adapter saved there (a record of how
    it was trained, say), so a crash never leaves a new adapter beside an old record. Every adapter's files are
    built before any is written, so an adapter that cannot be saved leaves the others' folders as they were too (a
    failure of the disk itself between two folders can still leave the first new)."""
    extra = _check_extra_files(extra_files)
    tuner = peft_model.base_model
    if tuner.unloaded_by is not None:
        raise AdapterError(f"save_pretrained: this PeftModel has no adapters left, {tuner.unloaded_by} removed them; "
                           "save the model it returned with minipeft.workshop.checkpoint.save_checkpoint, or save the "
                           "adapter before unloading it")
    if not peft_model.peft_config:
        raise AdapterError("save_pretrained: this PeftModel holds no adapter (the last one was deleted), so there "
                           "is nothing to save; add_adapter() one first")
    if isinstance(selected, str):
        raise TypeError(f"save_pretrained: selected_adapters must be a list of adapter names, got the string "
                        f"{selected!r}; pass [{selected!r}]")
    if os.path.exists(root) and not os.path.isdir(root):
        raise AdapterError(f"save_pretrained: {root!r} is a file, but an adapter is saved as a folder (config + "
                           "weights); pass a folder path")
    names = selected or list(peft_model.peft_config)
    for name in names:
        if name not in peft_model.peft_config:
            raise KeyError(f"save_pretrained: no adapter named {name!r}; adapters are {sorted(peft_model.peft_config)}")
    base = peft_model.get_base_model()
    staged = {}
    for name in names:
        cfg = peft_model.peft_config[name].to_dict()
        cfg["inference_mode"] = True
        cfg["base_model_fingerprint"] = peft_model.base_fingerprint
        if hasattr(base, "config") and hasattr(base.config, "to_dict"):
            cfg["base_model_config"] = base.config.to_dict()
        arrays = adapter_state_dict(peft_model, name)
        check_finite(arrays, f"save_pretrained: adapter {name!r}", "the training diverged; lower the learning rate "
                     "and train again, or save an earlier checkpoint")
        meta = {"format": "np", "peft_type": cfg["peft_type"], "base_model_fingerprint": peft_model.base_fingerprint,
                CHECKSUM_KEY: tensors_sha256(arrays)}
        staged[adapter_dir(root, name)] = {
            WEIGHTS_NAME: safetensors_bytes(arrays, meta),     # the same adapter saves to the same bytes
            CONFIG_NAME: json.dumps(cfg, indent=2).encode(),   # in field order: rank_pattern's order is its meaning
        }
    if extra:
        staged[root] = {**staged.get(root, {}), **extra}
    for directory, files in staged.items():
        write_files_as_unit(directory, files)


def _check_extra_files(extra_files) -> dict[str, bytes]:
    """extra_files as {plain file name: bytes}, refusing a name that is a path, hidden, or one of the adapter's own."""
    if extra_files is None:
        return {}
    if not isinstance(extra_files, dict):
        raise TypeError(f"save_pretrained: extra_files must be a dict {{file name: bytes}}, got "
                        f"{type(extra_files).__name__}")
    for name, data in extra_files.items():
        if (not isinstance(name, str) or not name or name.startswith(".") or os.path.basename(name) != name
                or name in (CONFIG_NAME, WEIGHTS_NAME)):
            raise ValueError(f"save_pretrained: extra file name {name!r} must be a plain file name, not hidden, not "
                             f"a path and not {CONFIG_NAME} or {WEIGHTS_NAME}, e.g. 'run.json'")
        if not isinstance(data, bytes):
            raise TypeError(f"save_pretrained: extra file {name!r} must be bytes, got {type(data).__name__}; "
                            "encode text with .encode()")
    return dict(extra_files)


def check_finite(arrays: dict, where: str, fix: str) -> None:
    """Raise an AdapterError naming the first float array that holds NaN or inf (no adapter means anything then)."""
    for key, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "inf"
            raise AdapterError(f"{where}: tensor {key!r} holds {bad} ({int((~np.isfinite(a)).sum())} of {a.size} "
                               f"values are not finite); {fix}")


def recover(directory: str) -> None:
    """Finish (or drop) a save into `directory` that a crash cut short, so the reader sees one whole save."""
    try:
        # the names of any extra files saved with the adapter are read off their temps
        recover_files(directory, {WEIGHTS_NAME, CONFIG_NAME, *staged_names(directory)})
    except OSError as e:
        raise AdapterError(f"{directory!r} holds a save that was interrupted, and finishing it failed ({e}); make the "
                           "folder writable and load again, or save the adapter again") from e


def read_config(directory: str) -> dict:
    """The adapter_config.json of `directory` as a dict (after finishing any save a crash cut short)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"an adapter is loaded from a folder path, got {type(directory).__name__}")
    if os.path.isfile(directory):
        raise AdapterError(f"{directory!r} is a file; pass the adapter folder that holds {CONFIG_NAME} and "
                           f"{WEIGHTS_NAME} (written by save_pretrained)")
    recover(directory)
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise AdapterError(f"no {CONFIG_NAME} in {directory!r}; point at a folder written by save_pretrained()")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON ({e}); the file is corrupted: save the adapter again") from e
    if not isinstance(saved, dict):
        raise AdapterError(f"{path} holds a JSON {type(saved).__name__}, not an object {{\"peft_type\": ..., ...}}; "
                           "it is not an adapter config: save the adapter again with save_pretrained()")
    return saved


def _check_base(saved: dict, actual: str, directory: str, check: bool, model: Module) -> None:
    """Refuse a base whose fingerprint differs from the one the config records, or else the weights file's metadata
    (save_pretrained writes both; a config edited or written by hand may lack it)."""
    want = saved.get("base_model_fingerprint")
    if want is None and check:
        want = _weights_metadata(directory).get("base_model_fingerprint")
    if check and want is not None and want != actual:
        raise AdapterError(f"the adapter in {directory!r} was trained on a base model with fingerprint {want}, but "
                           f"this base model's fingerprint is {actual}; load the matching base model"
                           f"{_quantization_hint(model)}, or pass check_base_model=False if you really mean to apply "
                           "it to this one")


def _quantization_hint(model: Module) -> str:
    """The likeliest mix-up when the weights differ: a QLoRA adapter on the float base, or the reverse."""
    if any(p.dtype.kind != "f" for _, p in base_named_parameters(model)):
        return (" (this base is 4-bit quantized: an adapter trained on the float base, such as LoRA's, loads onto "
                "the float base; a QLoRA adapter loads onto the base quantized with the BitsAndBytesConfig it was "
                "trained on)")
    return (" (this base is not quantized: if the adapter is QLoRA's, it was trained on the 4-bit base; load it onto "
            "quantize_model(base, the BitsAndBytesConfig it was trained with))")


def _weights_metadata(directory: str) -> dict:
    """The weights file's safetensors metadata; empty when it cannot be read (load_weights then says why)."""
    try:
        with safe_open(os.path.join(directory, WEIGHTS_NAME), framework="numpy") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return {}


def load_weights(peft_model, directory: str, name: str) -> None:
    """Copy the adapter's arrays from disk into adapter `name`'s parameters, checking every key and shape."""
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise AdapterError(f"no {WEIGHTS_NAME} in {directory!r}; point at a folder written by save_pretrained()")
    try:
        arrays, _ = read_checked_tensors(path)
    except ChecksumMismatch as e:
        raise AdapterError(f"{e}: save the adapter again") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} could not be read as safetensors ({e}); it is truncated or corrupted: "
                           "save the adapter again") from e
    check_finite(arrays, path, "the adapter was saved from a diverged training run; train it again")
    params = dict(peft_model.named_parameters())
    expected = adapter_keys(peft_model, name)
    extras = peft_model.base_model.adapter_file_extras(name)   # arrays that are not parameters (sparse indices)
    missing = sorted((set(expected) | set(extras)) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected) - set(extras))
    if missing or unexpected:
        raise AdapterError(f"{path} does not fit this model: missing keys {missing[:6]}, unexpected keys "
                           f"{unexpected[:6]}; was it saved from another base model, or was its {CONFIG_NAME} "
                           "(target_modules, layers_to_transform, ...) edited after saving?")
    pairs = []
    for key, arr in arrays.items():
        if key in extras:
            if tuple(arr.shape) != tuple(extras[key].shape):
                raise AdapterError(f"{path}: {key} has shape {tuple(arr.shape)} but the model expects "
                                   f"{tuple(extras[key].shape)}; was its {CONFIG_NAME} edited after saving?")
            continue
        p = params[expected[key]]
        if tuple(arr.shape) != p.shape:
            raise AdapterError(f"{path}: {key} has shape {tuple(arr.shape)} but the model expects {p.shape}; "
                               f"the adapter was made for a different base model shape, or its {CONFIG_NAME} "
                               "(r, rank_pattern, ...) was edited after saving")
        pairs.append((p, arr))
    if extras:   # the method checks its own arrays' values before any parameter is set
        try:
            peft_model.base_model.load_file_extras(name, {k: arrays[k] for k in extras})
        except ValueError as e:
            raise AdapterError(f"{path}: {e}") from None
    for p, arr in pairs:  # every shape checked first: no half-loaded adapter
        p.data = backend.asarray(arr, dtype=p.dtype).copy()


def parse_config(saved: dict, directory: str):
    """The config object for a saved adapter_config.json; a field we cannot honour is named, not ignored."""
    try:
        return config_from_dict(saved)
    except (ConfigError, TypeError) as e:
        raise AdapterError(f"{os.path.join(directory, CONFIG_NAME)}: {e}") from e


@contextlib.contextmanager
def _naming(directory: str):
    """Re-raise a config that does not fit the model (targets match nothing, ...) as an AdapterError naming the file."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if isinstance(e, AdapterError):
            raise
        raise AdapterError(f"{os.path.join(directory, CONFIG_NAME)} does not fit this model: {e}") from e


def from_pretrained(cls, model: Module, directory: str, name: str, is_trainable: bool, check: bool):
    """Build a PeftModel around `model` from a saved adapter folder."""
    if isinstance(model, cls):   # before the fingerprint check, which would blame the wrong thing
        raise TypeError("PeftModel.from_pretrained takes the base model, got a PeftModel; to add this adapter to "
                        f"it call peft_model.load_adapter({directory!r}, adapter_name), or pass the plain base model")
    saved = read_config(directory)
    config = parse_config(saved, directory)
    _check_base(saved, fingerprint(model), directory, check, model)
    config.inference_mode = not is_trainable
    with _naming(directory):
        peft_model = cls(model, config, name)
    try:
        load_weights(peft_model, directory, name)
    except BaseException:
        peft_model.unload()  # hand the caller's model back as it was, without our wrappers
        raise
    if not is_trainable:    # frozen already: the config says inference_mode (BaseTuner.mark_trainable)
        peft_model.eval()   # as Hugging Face PEFT: dropout off, so two calls give the same output
    return peft_model


def load_adapter(peft_model, directory: str, name: str, is_trainable: bool, check: bool) -> None:
    """Add a saved adapter under `name` to an existing PeftModel (not activated)."""
    saved = read_config(directory)
    config = parse_config(saved, directory)
    _check_base(saved, peft_model.base_fingerprint, directory, check, peft_model.get_base_model())
    config.inference_mode = not is_trainable
    active = peft_model.active_adapter
    with _naming(directory):
        peft_model.add_adapter(name, config)
    try:
        load_weights(peft_model, directory, name)
    except BaseException:
        peft_model.set_adapter(active)
        peft_model.delete_adapter(name)  # no half-loaded adapter left behind
        raise
    peft_model.set_adapter(active)   # the new adapter stays frozen: not active, and inference_mode if not trainable
    if not is_trainable:
        peft_model.eval()   # as Hugging Face PEFT's load_adapter
