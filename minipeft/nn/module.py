"""`Module` and `Parameter`: the PyTorch-like containers that hold a model's weights.

A module finds its parameters and submodules by looking at its own attributes (in the order
they were set), so `named_parameters()` yields names like `blocks.0.attn.q_proj.weight`, the
same dotted paths PEFT methods target. Optimizer state never lives here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from minipeft import backend
from minipeft.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer may update (requires grad by default)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


class Module:
    """Base class of every layer and model: parameters, submodules, train/eval, state_dict."""

    training: bool = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- discovery ---------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, v in vars(self).items():
            if isinstance(v, Module):
                yield name, v

    def children(self) -> Iterator[Module]:
        """The direct submodules, as torch's Module.children()."""
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module ("" or prefix) and every submodule, by dotted path, each once."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop(0)
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            stack[:0] = [(f"{name}.{c}" if name else c, child) for c, child in m.named_children()]

    def modules(self) -> Iterator[Module]:
        """This module and every submodule, each once, in named_modules' order (torch's Module.modules())."""
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", trainable_only: bool = False) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) for every parameter, a shared one listed once."""
        seen: set[int] = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in vars(m).items():
                if isinstance(p, Parameter) and id(p) not in seen:
                    seen.add(id(p))
                    if p.requires_grad or not trainable_only:
                        yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, trainable_only: bool = False) -> list[Parameter]:
        return [p for _, p in self.named_parameters(trainable_only=trainable_only)]

    def num_parameters(self, trainable_only: bool = False, *, only_trainable: bool | None = None) -> int:
        """Total element count of the (trainable) parameters; `only_trainable` is transformers' name for the flag."""
        if only_trainable is not None:
            trainable_only = only_trainable
        return sum(p.size for p in self.parameters(trainable_only=trainable_only))

    def get_submodule(self, path: str) -> Module:
        m: Module = self
        for part in path.split(".") if path else []:
            child = getattr(m, part, None)
            if not isinstance(child, Module):
                raise AttributeError(f"{type(self).__name__} has no submodule {path!r} (failed at {part!r})")
            m = child
        return m

    def set_submodule(self, path: str, module: Module) -> None:
        """Replace the submodule at a dotted path (how PEFT methods wrap a layer in place)."""
        if not isinstance(module, Module):
            raise TypeError(f"set_submodule({path!r}): expected a Module, got {type(module).__name__}")
        parent_path, _, name = path.rpartition(".")
        parent = self.get_submodule(parent_path)
        if not isinstance(getattr(parent, name, None), Module):
            raise AttributeError(f"no submodule {path!r} to replace")
        setattr(parent, name, module)

    # ---- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set every parameter's requires_grad, as torch's Module.requires_grad_(); returns self."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def freeze(self) -> Module:
        """Make every parameter non-trainable: requires_grad_(False)."""
        return self.requires_grad_(False)

    def unfreeze(self) -> Module:
        """Make every parameter trainable: requires_grad_(True)."""
        return self.requires_grad_(True)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype) -> Module:
        """Cast every float parameter (and its gradient) to a float dtype in place, e.g. float64 for grad checks.

        Integer parameters (a quantized layer's 4-bit codes) keep their dtype: casting codes would corrupt them.
        """
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{type(self).__name__}.to takes a float dtype such as 'float64', got {dtype!r}; the "
                            "device is chosen in one place: minipeft.set_device('cuda') (or MINIPEFT_DEVICE=cuda) "
                            "before the model is built") from None
        if dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}.to: parameters must stay floating, "
                            f"got dtype {np.dtype(dtype)}")
        for p in self.parameters():
            if p.dtype.kind != "f":
                continue
            p.data = p.data.astype(dtype)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype)
        return self

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> array (backend arrays, not copies) for every parameter."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into the parameters by name; returns (missing, unexpected) keys.

        With strict=True any missing or unexpected key raises; a shape mismatch always raises.
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict({type(self).__name__}): missing keys {missing[:8]}"
                           f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                           f"{' ...' if len(unexpected) > 8 else ''}; was this state saved from another model "
                           "config? pass strict=False to load the matching subset")
        for name, p in params.items():  # check every shape before copying anything: no half-loaded model
            if name not in state:
                continue
            v = state[name]
            shape = tuple(v.shape) if hasattr(v, "shape") else np.shape(v)   # a nested list has no .shape
            if shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {shape} in the state "
                                 f"but {p.shape} in the model; the configs differ")
        for name, p in params.items():
            if name in state:
                p.data = backend.asarray(state[name], dtype=p.dtype).copy()
        return missing, unexpected

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


class ModuleList(Module):
    """A list of modules whose parameters are named `0.`, `1.`, ... like torch.nn.ModuleList."""

    def __init__(self, modules=()):
        modules = list(modules)
        for i, m in enumerate(modules):
            setattr(self, str(i), m)
        self._n = len(modules)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Module:
        if not -self._n <= i < self._n:
            raise IndexError(f"ModuleList index {i} out of range for length {self._n}")
        return getattr(self, str(i % self._n))

    def __iter__(self) -> Iterator[Module]:
        return (getattr(self, str(i)) for i in range(self._n))


class _KeyedDict(Module):
    """What ModuleDict and ParameterDict share: values of one kind by string key, kept as attributes."""

    _holds: type = Module    # the kind of value this dict holds
    _what: str = "module"    # its name in error messages

    def __init__(self, items: dict | None = None):
        self._keys: list[str] = []
        for k, v in (items or {}).items():
            self[k] = v

    def __setitem__(self, key: str, value) -> None:
        if not isinstance(value, self._holds):
            raise TypeError(f"{type(self).__name__} values must be {self._holds.__name__}s, got "
                            f"{type(value).__name__} for {key!r}")
        if key not in self._keys:
            self._keys.append(key)
        setattr(self, key, value)

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(f"no {self._what} named {key!r}; have {self._keys}")
        return getattr(self, key)

    def __delitem__(self, key: str) -> None:
        self[key]  # raises a clear KeyError when absent
        self._keys.remove(key)
        delattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        """The keys, as iterating a dict (or torch's ModuleDict) gives them."""
        return iter(list(self._keys))

    def keys(self) -> list[str]:
        return list(self._keys)

    def items(self) -> list[tuple[str, object]]:
        return [(k, getattr(self, k)) for k in self._keys]


class ModuleDict(_KeyedDict):
    """Modules by string key, named `<key>.` in parameter paths, like torch.nn.ModuleDict."""

    _holds, _what = Module, "module"


class ParameterDict(_KeyedDict):
    """Parameters by string key, named `<key>` in parameter paths, like torch.nn.ParameterDict."""

    _holds, _what = Parameter, "parameter"
