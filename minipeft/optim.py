"""Optimizers (AdamW, SGD), global gradient clipping and a warmup + cosine learning-rate schedule.

Optimizer state (Adam's m and v, SGD's momentum buffer) lives here, keyed by parameter, and is
created at a parameter's first update, only for parameters that have a gradient: a frozen base model
costs no optimizer memory, which is half of what parameter-efficient fine-tuning saves. As in PyTorch,
an optimizer keeps every parameter it is given and each step updates those with a gradient, so one
built from `peft_model.parameters()` also trains an adapter that `set_adapter` unfreezes later.
Updates write into `p.data` in place (`out=` / augmented assignment) through one reusable scratch
buffer per dtype, so a step allocates nothing once it has run once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from minipeft import backend
from minipeft.nn.module import Parameter
from minipeft.ops.fastpath import pick


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _number(v) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Optimizer:
    """Base class: parameter groups, a settable `lr`, `zero_grad()`, per-parameter `state`."""

    defaults: dict[str, Any] = {}

    def __init__(self, params, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}  # Tensor hashes by identity
        self._scratch: dict[Any, Any] = {}
        if hasattr(params, "named_parameters"):   # a Module where its parameters belong (torch raises here too)
            raise TypeError(f"{type(self).__name__} got a {type(params).__name__} module; pass its parameters: "
                            "model.parameters(trainable_only=True)")
        items = list(params) if not isinstance(params, Parameter) else [params]
        if not items:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass model.parameters()")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        seen: set[int] = set()
        n_total = 0
        for g in groups:
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(f"{type(self).__name__}: pass a list of Parameters or a list of dicts with a "
                                f"'params' key, not a mix; got {type(g).__name__}")
            unknown = set(g) - {"params"} - set(self.defaults)
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown group options {sorted(unknown)}; "
                                 f"allowed: {sorted(self.defaults)}")
            group = {**self.defaults, **g}
            self._validate(group)
            ps = []
            for p in list(group["params"]):
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: expected Parameters, got {type(p).__name__}")
                n_total += 1
                if id(p) not in seen:  # kept even if frozen now (PyTorch's rule); a step skips it while it is
                    seen.add(id(p))
                    ps.append(p)
            group["params"] = ps
            self.param_groups.append(group)
        if not any(p.requires_grad for p in self.params()):
            raise ValueError(f"{type(self).__name__}: all {n_total} parameters are frozen (requires_grad=False); "
                             "nothing to optimize. Unfreeze some or apply a PEFT method first")

    def _validate(self, group: dict[str, Any]) -> None:
        _check("lr", group["lr"], _number(group["lr"]) and group["lr"] > 0, "a finite number > 0")
        wd = group.get("weight_decay", 0.0)
        _check("weight_decay", wd, _number(wd) and wd >= 0, "a finite number >= 0")

    @property
    def lr(self) -> float:
        """The learning rate of the first group (all groups share it unless set per group)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        _check("lr", value, isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
               "a finite number >= 0")
        for g in self.param_groups:
            g["lr"] = float(value)

    def params(self) -> list[Parameter]:
        """Every parameter this optimizer holds; a step updates those that require grad and have a gradient."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Drop the gradients (set to None) so the next backward starts from zero."""
        for p in self.params():
            p.grad = None

    def _tmp(self, p: Parameter):
        """A scratch array shaped like p, a view into one buffer shared by all same-dtype params."""
        buf = self._scratch.get(p.dtype)
        if buf is None or buf.size < p.size:
            sizes = [q.size for q in self.params() if q.dtype == p.dtype and q.requires_grad]   # frozen: none
            buf = backend.xp().empty(max(sizes + [p.size]), dtype=p.dtype)
            self._scratch[p.dtype] = buf
        return buf[: p.size].reshape(p.shape)

    def step(self) -> None:
        raise NotImplementedError


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr wd p;  p -= lr m_hat / (sqrt(v_hat) + eps),
    with m_hat = m / (1 - b1^t) and v_hat = v / (1 - b2^t).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        b = group["betas"]
        _check("betas", b, isinstance(b, (tuple, list)) and len(b) == 2 and all(_number(x) and 0 <= x < 1 for x in b),
               "a pair (beta1, beta2) with 0 <= beta < 1")
        _check("eps", group["eps"], _number(group["eps"]) and group["eps"] > 0, "a finite number > 0")

    def step(self) -> None:
        """Update every parameter that has a gradient; those with `.grad is None` are skipped."""
        xp = backend.xp()
        update = pick(adamw_update)  # the reference below, or its chunked fast path (same numbers, bit for bit)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                g = p.grad
                if g is None or not p.requires_grad:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "m": xp.zeros_like(p.data), "v": xp.zeros_like(p.data)}
                st["step"] += 1
                update(p.data, g, st["m"], st["v"], self._tmp(p), st["step"], lr, b1, b2, eps, wd)


def adamw_update(p, g, m, v, tmp, t: int, lr: float, b1: float, b2: float, eps: float, wd: float) -> None:
    """One AdamW update of the array p from its gradient g, in place; m, v (Adam's moments) updated in place.

    tmp is scratch of p's shape. The reference: whole-array passes, each written `out=` or in place so
    nothing is allocated (minipeft.workshop.fast.adamw runs the same passes over cache-sized chunks).
    """
    xp = backend.xp()
    m *= b1                                     # m = b1 m + (1 - b1) g
    xp.multiply(g, 1 - b1, out=tmp)
    m += tmp
    v *= b2                                     # v = b2 v + (1 - b2) g^2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v += tmp
    if wd:
        p *= 1 - lr * wd                        # decoupled: decay the weight, not the gradient
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    xp.sqrt(v, out=tmp)                         # sqrt(v_hat) + eps = sqrt(v) / sqrt(bc2) + eps
    tmp /= math.sqrt(bc2)
    tmp += eps
    xp.divide(m, tmp, out=tmp)                  # m / (...)
    tmp *= lr / bc1                             # m_hat = m / bc1
    p -= tmp


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and (L2, coupled) weight decay, as in PyTorch.

    d = g + wd p;  buf = momentum buf + d (buf = d without momentum);  p -= lr buf.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        mom = group["momentum"]
        _check("momentum", mom, _number(mom) and 0 <= mom < 1, "a number in [0, 1)")

    def step(self) -> None:
        """Update every parameter that has a gradient; those with `.grad is None` are skipped."""
        xp = backend.xp()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                g = p.grad
                if g is None or not p.requires_grad:
                    continue
                tmp = self._tmp(p)
                if mom:
                    st = self.state.get(p)
                    if st is None:
                        st = self.state[p] = {"step": 0, "momentum_buffer": xp.zeros_like(p.data)}
                    st["step"] += 1
                    buf = st["momentum_buffer"]
                    buf *= mom
                    buf += g
                    if wd:
                        xp.multiply(p.data, wd, out=tmp)
                        buf += tmp
                    xp.multiply(buf, lr, out=tmp)
                else:
                    xp.multiply(g, lr, out=tmp)
                    if wd:
                        p.data *= 1 - lr * wd               # p -= lr wd p, the L2 term of d
                p.data -= tmp


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before clipping.

    A non-finite norm is returned unchanged and nothing is scaled (the caller decides what to do).
    """
    _check("max_norm", max_norm, isinstance(max_norm, (int, float)) and max_norm > 0, "a number > 0")
    xp = backend.xp()
    params = list({id(p): p for p in params}.values())  # a tied parameter counts once
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sq = 0.0
    for g in grads:
        flat = g.ravel()
        sq = sq + xp.vdot(flat, flat)                      # stays on the device; one sync below
    norm = float(math.sqrt(float(sq)))
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad is not None:
                # a new array, not `*=`: two leaves' grads may be the same array (y = a + b gives both dy)
                p.grad = p.grad * p.grad.dtype.type(scale)
    return norm


def cosine_schedule(step: int, max_steps: int, warmup_steps: int, max_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate at `step`: linear warmup to max_lr over warmup_steps, then cosine decay to min_lr.

    lr = max_lr (step+1)/warmup for step < warmup;  min_lr + (max_lr - min_lr) (1 + cos(pi r)) / 2 after,
    with r = (step - warmup) / (max_steps - warmup); min_lr from max_steps on.
    """
    _check("max_steps", max_steps, isinstance(max_steps, int) and max_steps >= 1, "an int >= 1")
    _check("warmup_steps", warmup_steps, isinstance(warmup_steps, int) and 0 <= warmup_steps <= max_steps,
           f"an int in [0, max_steps={max_steps}]")
    _check("max_lr", max_lr, max_lr > 0, "> 0")
    _check("min_lr", min_lr, 0 <= min_lr <= max_lr, f"in [0, max_lr={max_lr}]")
    _check("step", step, step >= 0, ">= 0")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    r = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))
