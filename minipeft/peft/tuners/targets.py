"""Which modules a method wraps: `target_modules` (names, one regex, or "all-linear"), `layers_to_transform`,
and Hugging Face's per-module patterns (`rank_pattern`, `alpha_pattern`).

A layer index is read from the path of the model's list of layers, in either family's name for it: the mini
GPT's `blocks.3.attn.q_proj` and transformers' Llama `model.layers.3.self_attn.q_proj` (Hugging Face's
`layers_pattern` "layers"). Defaults that depend on the model (IA3's targets) are looked up by
`model.config.model_type`, as Hugging Face PEFT looks them up.
"""

from __future__ import annotations

import difflib
import re
import warnings

from minipeft.nn.layers import Linear
from minipeft.nn.module import Module

LAYERS_PATTERNS = ("blocks", "layers")   # the list of layers: the mini GPT's, transformers' (Llama and most others)
_LAYER = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYERS_PATTERNS)})\.(\d+)\.")
ALL_LINEAR = "all-linear"   # Hugging Face's shorthand: every Linear except the output layer


def matches(path: str, target_modules: list[str] | str) -> bool:
    """A list matches a module whose path equals a name or ends in '.name'; a str is a full-match regex."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, path) is not None
    return any(path == t or path.endswith("." + t) for t in target_modules)


def pattern_key(patterns, path: str) -> str | None:
    """The first key of `patterns` that matches the end of `path` at a dot boundary (HF's get_pattern_key).

    A key is a regex: "v_proj" matches "blocks.0.attn.v_proj", "blocks.1.attn.v_proj" only that layer's.
    """
    return next((k for k in patterns if re.match(rf"(.*\.)?({k})$", path)), None)


def pattern_value(patterns: dict, path: str, default):
    """The value at module `path`: the value of `patterns`' first key that matches it, else `default` (LoRA's r
    and rank_pattern, lora_alpha and alpha_pattern: Hugging Face's rule, for any method with such patterns)."""
    key = pattern_key(patterns, path)
    return default if key is None else patterns[key]


def warn_unmatched_patterns(config, fields: tuple[str, ...], paths: list[str]) -> None:
    """Warn about a key of a pattern field (rank_pattern, ...) that matches none of the wrapped `paths`: it would leave
    them at the default without a word (Hugging Face PEFT is silent here)."""
    names = sorted({p.rsplit(".", 1)[-1] for p in paths})
    for field in fields:
        unmatched = [k for k in getattr(config, field) if not any(pattern_key([k], p) for p in paths)]
        if unmatched:
            warn_unmatched(f"{type(config).__name__}.{field}", unmatched, names, " that this adapter wraps")


def modules_named(model: Module, names: set[str], kind: type = Linear) -> list[Module]:
    """The modules of type `kind` whose own name (the path's last part) is in `names`: a method's targets, counted."""
    return [m for p, m in model.named_modules() if isinstance(m, kind) and p.rsplit(".", 1)[-1] in names]


def layer_index(path: str) -> int | None:
    """The index N of the layer a module path lies in (`blocks.N.` or `layers.N.`), or None outside the layers."""
    m = _LAYER.search(path)
    return None if m is None else int(m.group(1))


def model_type(model: Module) -> str | None:
    """`model.config.model_type` ("llama", "minipeft-gpt"), the key of Hugging Face PEFT's per-model defaults."""
    return getattr(getattr(model, "config", None), "model_type", None)


def default_for(table: dict[str, list[str]], model: Module, what: str) -> list[str]:
    """The entry of a per-model-type defaults table for `model`, or an error naming the field to set."""
    kind = model_type(model)
    if kind not in table:
        raise ValueError(f"{what} is None and there is no default for model_type {kind!r} (defaults exist for "
                         f"{sorted(table)}); name the modules explicitly")
    return list(table[kind])


def find_targets(model: Module, target_modules: list[str] | str, layers_to_transform: list[int] | None = None,
                 allowed: tuple[type, ...] = (), method: str = "LoRA",
                 skip_inside: tuple[type, ...] = ()) -> list[str]:
    """Dotted paths of the modules to wrap; a clear error when nothing (or the wrong kind) matches.

    Modules inside a module of a `skip_inside` type (an existing adapter wrapper) are never targets:
    the wrapper itself is, so a second adapter lands on the same wrapper.
    """
    inside = [p for p, m in model.named_modules() if p and isinstance(m, skip_inside)] if skip_inside else []
    found = []
    for path, m in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in inside):
            continue
        if target_modules == ALL_LINEAR:
            if not (allowed and isinstance(m, allowed)) or path.rsplit(".", 1)[-1] == "lm_head":
                continue
        elif not matches(path, target_modules):
            continue
        if layers_to_transform is not None and layer_index(path) not in layers_to_transform:
            continue
        if allowed and not isinstance(m, allowed):
            kinds = "/".join(c.__name__ for c in allowed)
            raise TypeError(f"{method} can wrap {kinds} modules, but target {path!r} is a {type(m).__name__}; "
                            "name its Linear children instead (e.g. 'q_proj', 'fc1')")
        found.append(path)
    leaf = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if p and (not allowed
                                                                                    or isinstance(m, allowed))})
    where = "" if layers_to_transform is None else f" in layers {layers_to_transform}"
    if not found:
        raise ValueError(f"target_modules={target_modules!r} matched no module{where}. Module names that can "
                         f"be targeted: {leaf}")
    if isinstance(target_modules, list):   # a misspelt name beside a right one would wrap fewer modules, silently
        unmatched = [t for t in target_modules if not any(matches(p, [t]) for p in found)]
        if unmatched:
            warn_unmatched("target_modules", unmatched, leaf, where)
    return found


def warn_unmatched(field: str, entries: list[str], names: list[str], where: str = "") -> None:
    """One warning naming the entries of `field` that matched no module, each with the nearest module name."""
    def nearest(entry: str) -> str:
        close = difflib.get_close_matches(entry.rsplit(".", 1)[-1], names, n=1, cutoff=0.0)
        return f"{entry!r} (nearest module name: {close[0]!r})" if close else repr(entry)

    warnings.warn(f"{field}: {', '.join(nearest(e) for e in entries)} matched no module{where}, so it has no "
                  f"effect; module names here are {names}", UserWarning, stacklevel=4)
