"""Which base parameters a selection names: by kind (bias, norm, embedding, all), by module pattern, by layer index;
and the check of the config fields that say so.

Shared by selective fine-tuning (the selected tensors train) and sparse fine-tuning (the selected tensors are
the candidates whose entries are scored). A module already wrapped by one of these methods counts as the
module it wraps, so a second adapter selects the same way as the first.
"""

from __future__ import annotations

from collections.abc import Iterator

from minipeft.nn.layers import Embedding, LayerNorm, Linear
from minipeft.nn.llama import RMSNorm
from minipeft.nn.module import Module, Parameter
from minipeft.peft.config import ConfigError, check_field, check_target_fields
from minipeft.peft.tuners.base_layer import BaseTunerLayer
from minipeft.peft.tuners.targets import layer_index, matches

TRAINABLE_TYPES = ("bias", "norm", "embedding", "all")   # what `trainable_types` may name
NORMS = (LayerNorm, RMSNorm)                          # "norm" selects their parameters (RMSNorm has only a scale)
SUPPORTED = (Linear, LayerNorm, RMSNorm, Embedding)   # the modules that hold parameters in the GPT and the Llama


def own_parameters(module: Module) -> list[str]:
    """Names of the parameters a module holds itself (not its submodules'): Linear's "weight", "bias", ..."""
    return [n for n, p in vars(module).items() if isinstance(p, Parameter)]


def parameter_modules(model: Module) -> Iterator[tuple[str, Module]]:
    """(path, module) of every module that holds parameters itself; a tuner layer stands for its base module."""
    inside: list[str] = []
    for path, m in model.named_modules():
        if any(path.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, BaseTunerLayer):
            inside.append(path)
            m = m.get_base_layer()
        if own_parameters(m):
            yield path, m


def input_embeddings(model: Module) -> Module | None:
    """The token embedding table, model.get_input_embeddings() (the module it wraps, if an adapter wraps it)."""
    get = getattr(model, "get_input_embeddings", None)
    m = None if get is None else get()
    return m.get_base_layer() if isinstance(m, BaseTunerLayer) else m


def _kind_selected(module: Module, pname: str, types: list[str], embeddings: Module | None) -> bool:
    is_norm = isinstance(module, NORMS)
    return ("all" in types or ("bias" in types and pname == "bias") or ("norm" in types and is_norm)
            or ("embedding" in types and module is embeddings))


def _module_selected(path: str, target_modules) -> bool:
    """target_modules matches this module or a module above it ("blocks.3" selects all of block 3)."""
    parts = path.split(".")
    return any(matches(".".join(parts[:i]), target_modules) for i in range(1, len(parts) + 1))


def select_parameters(model: Module, config, method: str) -> dict[str, list[str]]:
    """{module path: [names of its selected parameters]} in model order; a clear error when nothing is selected.

    config has trainable_types, target_modules, layers_to_transform (see SelectiveConfig).
    """
    types, targets, layers = config.trainable_types, config.target_modules, config.layers_to_transform
    if "bias" in types and "all" not in types and not any(p == "bias" for _, m in parameter_modules(model)
                                                           for p in own_parameters(m)):
        raise ValueError(f"{method}: trainable_types={types!r} asks for the bias terms (BitFit), but this "
                         f"{type(model).__name__} has no bias parameter (a Llama's Linear and RMSNorm layers have "
                         "none); choose another selection, e.g. trainable_types=['norm'] (the RMSNorm scales) or "
                         "target_modules=['v_proj']")
    chosen: dict[str, list[str]] = {}
    embeddings = input_embeddings(model)
    for path, m in parameter_modules(model):
        by_module = targets is not None and _module_selected(path, targets)
        names = [n for n in own_parameters(m) if by_module or _kind_selected(m, n, types, embeddings)]
        if names and layers is not None and layer_index(path) not in layers:
            continue
        if names:
            if type(m) not in SUPPORTED:   # exact types: a subclass (a 4-bit Linear) computes with another op
                kinds = "/".join(c.__name__ for c in SUPPORTED)
                raise TypeError(f"{method} can train parameters of {kinds} modules, but the selection includes "
                                f"{path!r}, a {type(m).__name__}; narrow target_modules or trainable_types")
            chosen[path] = names
    if not chosen:
        where = "" if layers is None else f" inside blocks layers_to_transform={layers!r}"
        leaves = sorted({p.rsplit(".", 1)[-1] for p, _ in parameter_modules(model)})
        raise ValueError(f"{method}: trainable_types={types!r}, target_modules={targets!r} selected no parameter"
                         f"{where}. Modules with parameters: {leaves}")
    return chosen


def check_selection_fields(config, default_types: list[str]) -> None:
    """Check and normalize trainable_types / target_modules / layers_to_transform (selective and sparse share them)."""
    t = config.trainable_types
    if t is None:
        config.trainable_types = list(default_types) if config.target_modules is None else []
    else:
        check_field(config, "trainable_types", isinstance(t, (list, tuple)) and all(x in TRAINABLE_TYPES for x in t),
                    f"None or a list drawn from {list(TRAINABLE_TYPES)}")
        config.trainable_types = list(dict.fromkeys(t))
    check_target_fields(config)     # names or one regex, layers_to_transform an index or a list of them
    if config.layers_to_transform is not None:
        config.layers_to_transform = list(config.layers_to_transform)
    if not config.trainable_types and config.target_modules is None:
        raise ConfigError(f"{type(config).__name__} selects nothing: trainable_types={config.trainable_types!r} and "
                          "target_modules=None; name a kind (trainable_types=['bias'] for BitFit, ['norm'], ['all']) "
                          "or modules (target_modules=['wte'])")
