"""Which modules a method wraps: `target_modules` (names or one regex) and `layers_to_transform`."""

from __future__ import annotations

import re

from minipeft.nn.module import Module

_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def matches(path: str, target_modules: list[str] | str) -> bool:
    """A list matches a module whose path equals a name or ends in '.name'; a str is a full-match regex."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, path) is not None
    return any(path == t or path.endswith("." + t) for t in target_modules)


def layer_index(path: str) -> int | None:
    m = _LAYER.search(path)
    return None if m is None else int(m.group(1))


def find_targets(model: Module, target_modules: list[str] | str, layers_to_transform: list[int] | None = None,
                 allowed: tuple[type, ...] = (), method: str = "LoRA") -> list[str]:
    """Dotted paths of the modules to wrap; a clear error when nothing (or the wrong kind) matches."""
    found = []
    for path, m in model.named_modules():
        if not path or not matches(path, target_modules):
            continue
        if layers_to_transform is not None and layer_index(path) not in layers_to_transform:
            continue
        if allowed and not isinstance(m, allowed):
            kinds = "/".join(c.__name__ for c in allowed)
            raise TypeError(f"{method} can wrap {kinds} modules, but target {path!r} is a {type(m).__name__}; "
                            "name its Linear children instead (e.g. 'q_proj', 'fc1')")
        found.append(path)
    if not found:
        leaf = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if p and (not allowed
                                                                                        or isinstance(m, allowed))})
        where = "" if layers_to_transform is None else f" in layers {layers_to_transform}"
        raise ValueError(f"target_modules={target_modules!r} matched no module{where}. Module names that can "
                         f"be targeted: {leaf}")
    return found
