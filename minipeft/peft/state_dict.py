"""`get_peft_model_state_dict` / `set_peft_model_state_dict`: an adapter's tensors by the names they have on disk,
as Hugging Face PEFT's functions of those names give and take them.

The keys are adapter_model.safetensors' keys (`base_model.model.blocks.0.attn.q_proj.lora_A.weight`, soft prompts'
`prompt_embeddings`): the adapter's name is dropped, so a state dict saved from adapter "default" can be set into
an adapter of any name, as in Hugging Face PEFT.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minipeft import backend
from minipeft.peft.save_load import AdapterError, adapter_keys, adapter_state_dict


class IncompatibleKeys(NamedTuple):
    """What set_peft_model_state_dict did not load (torch's `_IncompatibleKeys`)."""

    missing_keys: list[str]       # the adapter's keys the state dict lacks (left as they were)
    unexpected_keys: list[str]    # keys of the state dict that are not the adapter's (ignored)


def _check_adapter(model, adapter_name: str, where: str) -> None:
    if not hasattr(model, "peft_config"):
        raise TypeError(f"{where}: model must be a PeftModel (get_peft_model(base, config)), got "
                        f"{type(model).__name__}")
    if adapter_name not in model.peft_config:
        raise KeyError(f"{where}: no adapter named {adapter_name!r}; adapters are {sorted(model.peft_config)}")


def get_peft_model_state_dict(model, state_dict: dict | None = None, adapter_name: str = "default") -> dict:
    """{key on disk: array} of adapter `adapter_name`'s tensors (copies, on the CPU), as save_pretrained writes them.

    state_dict: ignored unless given, as in Hugging Face PEFT, where it replaces model.state_dict(); here it must be
    None (the adapter's arrays are read from the model)."""
    _check_adapter(model, adapter_name, "get_peft_model_state_dict")
    if state_dict is not None:
        raise ValueError("get_peft_model_state_dict: state_dict must be None here (the arrays are read from the "
                         "model); pass the model whose adapter to read")
    return adapter_state_dict(model, adapter_name)


def set_peft_model_state_dict(model, peft_model_state_dict: dict, adapter_name: str = "default") -> IncompatibleKeys:
    """Copy the arrays of `peft_model_state_dict` (keys as on disk) into adapter `adapter_name`; returns the keys
    that were missing and unexpected, loading the rest (torch's strict=False).

    Unlike Hugging Face PEFT's, missing_keys lists only the adapter's own keys (theirs also lists every base
    weight); an array whose shape differs from the parameter's is refused before anything is set, as theirs is
    without ignore_mismatched_sizes."""
    _check_adapter(model, adapter_name, "set_peft_model_state_dict")
    if not isinstance(peft_model_state_dict, dict):
        raise TypeError(f"set_peft_model_state_dict: expected a dict {{key on disk: array}} (as "
                        f"get_peft_model_state_dict returns), got {type(peft_model_state_dict).__name__}")
    keys = adapter_keys(model, adapter_name)
    extras = model.base_model.adapter_file_extras(adapter_name)   # arrays that are not parameters (sparse indices)
    params = dict(model.named_parameters())
    pairs = []
    for key, value in peft_model_state_dict.items():
        if key not in keys:
            continue
        p, arr = params[keys[key]], np.asarray(backend.to_numpy(value))
        if tuple(arr.shape) != p.shape:
            raise AdapterError(f"set_peft_model_state_dict: {key} has shape {tuple(arr.shape)} but adapter "
                               f"{adapter_name!r} expects {p.shape}; was the state dict taken from another config "
                               "(r, target_modules, ...)?")
        pairs.append((p, arr))
    given_extras = {k: peft_model_state_dict[k] for k in extras if k in peft_model_state_dict}
    if given_extras:
        if len(given_extras) != len(extras):
            raise AdapterError(f"set_peft_model_state_dict: {sorted(set(extras) - set(given_extras))} are missing; "
                               "the adapter's index arrays are set together")
        model.base_model.load_file_extras(adapter_name, {k: np.asarray(backend.to_numpy(v))
                                                         for k, v in given_extras.items()})
    for p, arr in pairs:      # every shape checked first: nothing half-set
        p.data = backend.asarray(arr, dtype=p.dtype).copy()
    known = set(keys) | set(extras)
    return IncompatibleKeys(sorted(known - set(peft_model_state_dict)), sorted(set(peft_model_state_dict) - known))
