"""Measure memory honestly: peak bytes of a block of code, and the bytes parameters and optimizer state hold.

Predicting a step's memory from shapes, and the accounting for models too large to run here, are in
minipeft/workshop/compare/ (memory_predict.py, memory_large.py).

What `PeakMemory` measures:
- CPU (NumPy): the high-water mark, above the level at entry, of memory traced by `tracemalloc`.
  NumPy reports every array buffer it allocates to tracemalloc, so this counts activations,
  gradients, optimizer state and temporaries created inside the block, plus Python objects.
  Arrays that already existed at entry (the model's weights) are not counted; add
  `param_bytes(model)` for the total. Tracing slows allocation-heavy code a little.
- GPU (CuPy): the growth of CuPy's default memory pool (`total_bytes()`) over the block. The
  pool is emptied of free blocks at entry and only grows while the block runs, so its size at
  exit is its high-water mark: the device memory the block needed, rounded up to CuPy's
  block sizes. `sample()` also polls the bytes in use, for code that frees the pool itself.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from minipeft import backend
from minipeft.loss import causal_lm_loss
from minipeft.optim import AdamW


class PeakMemory:
    """Context manager: `with PeakMemory() as pm: ...` then `pm.peak_bytes` (see the module docstring)."""

    def __init__(self):
        self.peak_bytes = 0
        self._gpu = False
        self._started_tracing = False
        self._base = 0
        self._pool = None

    def __enter__(self) -> PeakMemory:
        self._gpu = backend.is_gpu()
        if self._gpu:
            cupy = backend.xp()  # CuPy, or a registered stand-in that mirrors its memory pool

            self._pool = cupy.get_default_memory_pool()
            cupy.cuda.Device().synchronize()
            self._pool.free_all_blocks()  # so the pool's size tracks what the block needs
            self._base = self._pool.used_bytes()
            self._base_total = self._pool.total_bytes()
        else:
            self._started_tracing = not tracemalloc.is_tracing()
            if self._started_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def current(self) -> int:
        """Bytes allocated now beyond the level at entry (tracemalloc's current, or the pool's bytes in use)."""
        if self._gpu:
            return int(self._pool.used_bytes() - self._base)
        return int(tracemalloc.get_traced_memory()[0] - self._base)

    def sample(self) -> int:
        """Poll the current usage, update and return peak_bytes (cheap; call it inside loops if you like)."""
        if self._gpu:
            now = max(self._pool.used_bytes() - self._base, self._pool.total_bytes() - self._base_total)
        else:
            now = tracemalloc.get_traced_memory()[1] - self._base
        self.peak_bytes = max(self.peak_bytes, int(now))
        return self.peak_bytes

    def __exit__(self, *exc) -> None:
        if self._gpu:
            cupy = backend.xp()
            cupy.cuda.Device().synchronize()
        self.sample()
        if self._started_tracing:
            tracemalloc.stop()


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn() and return (its result, the peak bytes it allocated beyond what was live before)."""
    with PeakMemory() as pm:
        result = fn()
    return result, pm.peak_bytes


def param_bytes(model, trainable_only: bool = False) -> int:
    """Bytes held by the model's (trainable) parameters; a tied weight counts once."""
    return sum(int(p.data.nbytes) for p in model.parameters(trainable_only=trainable_only))


def grad_bytes(model) -> int:
    """Bytes held by the gradients currently stored on the model's parameters."""
    return sum(int(p.grad.nbytes) for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(opt) -> int:
    """Bytes of the optimizer's per-parameter state arrays (Adam's m and v, SGD momentum), not scratch."""
    return sum(int(v.nbytes) for st in opt.state.values() for v in st.values() if hasattr(v, "nbytes"))


def format_bytes(n: int) -> str:
    """Human-readable size: 1536 -> '1.5 KiB'."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"


@dataclass
class StepMemory:
    """Bytes of one training step by component (measured by `measure_step`, predicted by `memory.predict`).

    weights, gradients and optimizer_state are what the arrays hold; activations is what the forward pass
    leaves alive for the backward (the tape's saved arrays and the op outputs it keeps); peak is the step's
    high-water mark above what was allocated before it (the activations plus the backward's largest
    temporaries: the (targets, vocab) logits gradient beside the saved softmax). total = what a device
    must hold: weights + optimizer state (persistent) + the step's peak (gradients are made inside it).
    """

    weights: int            # every parameter's array (a 4-bit weight's codes and scales, as held)
    gradients: int          # .grad arrays after backward (trainable parameters only)
    optimizer_state: int    # AdamW's m and v (2 x 4 bytes per trainable float32 parameter)
    activations: int        # alive after the forward pass, kept for the backward
    peak: int               # the step's high-water mark beyond what existed before it

    @property
    def total(self) -> int:
        return self.weights + self.optimizer_state + max(self.peak, self.activations + self.gradients)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def measure_step(model, batch, optimizer=None, loss_fn=None) -> StepMemory:
    """Run a real training step on `batch` and read each component from the allocator (see StepMemory).

    batch: {"input_ids", "targets"} or (x, y). optimizer: defaults to AdamW with lr=0 on the trainable
    parameters, so the step allocates Adam's state and changes no weight. One untraced warm-up step first
    creates the optimizer state and the ops' one-time buffers, so the traced step is a steady-state one, as
    step 2, 3, ... of training are. On the CPU tracemalloc counts every NumPy buffer; on a GPU CuPy's pool.
    """
    loss_fn = loss_fn or causal_lm_loss
    x, y = (batch["input_ids"], batch["targets"]) if isinstance(batch, dict) else batch
    x, y = backend.asarray(x), backend.asarray(y)
    params = model.parameters(trainable_only=True)
    if not params:
        raise ValueError("measure_step: the model has no trainable parameters, so there is no training step to "
                         "measure; wrap it with get_peft_model or unfreeze something")
    if optimizer is None:
        optimizer = AdamW(params)
        optimizer.lr = 0.0                                  # Adam's state is made, no weight moves
    opt = optimizer
    was_training = getattr(model, "training", True)
    model.train()
    try:
        def step(pm: PeakMemory | None) -> tuple[int, int]:
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            acts = pm.current() if pm is not None else 0
            loss.backward()
            grads = grad_bytes(model)
            del loss                                        # the graph goes before the update, as in train()
            opt.step()
            opt.zero_grad()
            return acts, grads

        step(None)
        with PeakMemory() as pm:
            activations, gradients = step(pm)
    finally:
        model.train(was_training)
    return StepMemory(weights=param_bytes(model), gradients=gradients, optimizer_state=optimizer_state_bytes(opt),
                      activations=activations, peak=pm.peak_bytes)
