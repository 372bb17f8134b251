"""The training loop: forward, backward, clip, step, with a progress bar, evaluation and a NaN guard."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from minipeft import backend
from minipeft.autograd import Tensor, no_grad
from minipeft.loss import IGNORE_INDEX, causal_lm_loss
from minipeft.memory import PeakMemory
from minipeft.optim import Optimizer, clip_grad_norm_


@dataclass
class TrainResult:
    """What a training run measured."""

    losses: list[float] = field(default_factory=list)           # training loss of every step
    eval_history: list[tuple[int, dict]] = field(default_factory=list)  # (steps done, eval_fn's metrics)
    wall_time_s: float = 0.0                                    # seconds spent in the loop
    tokens_seen: int = 0                                        # non-ignored target tokens trained on
    tokens_per_s: float = 0.0                                   # tokens_seen / wall_time_s
    peak_memory_bytes: int | None = None                        # see minipeft.memory (measure_memory=True)
    grad_norms: list[float] = field(default_factory=list)       # global gradient norm before clipping

    @property
    def final_loss(self) -> float:
        """Mean of the last (up to) 10 step losses, a less noisy end point than the last one."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else math.nan


Batch = dict[str, Any] | tuple


def _unpack(batch: Batch, step: int):
    """(input_ids, targets) as backend int arrays, from a dict or an (x, y) tuple."""
    if isinstance(batch, dict):
        if "input_ids" not in batch or "targets" not in batch:
            raise KeyError(f"batch at step {step} is a dict with keys {sorted(batch)}; it needs 'input_ids' and "
                           "'targets'")
        x, y = batch["input_ids"], batch["targets"]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    else:
        raise TypeError(f"batch at step {step} must be a dict with 'input_ids'/'targets' or a tuple (x, y), "
                        f"got {type(batch).__name__}")
    return backend.asarray(x), backend.asarray(y)


def _batch_source(batches, steps: int) -> Callable[[int], Batch]:
    """Turn a step -> batch function or an iterable of batches into a step -> batch function."""
    if callable(batches) and not isinstance(batches, Iterator):
        return batches
    if not isinstance(batches, Iterable):
        raise TypeError(f"batches must be a function step -> batch or an iterable of batches, got "
                        f"{type(batches).__name__}")
    if hasattr(batches, "__len__") and len(batches) < steps:
        raise ValueError(f"batches holds {len(batches)} batches but steps={steps}; pass steps <= {len(batches)} "
                         "or a function step -> batch")
    it = iter(batches)

    def next_batch(step: int) -> Batch:
        try:
            return next(it)
        except StopIteration:
            raise ValueError(f"batches ran out after {step} steps (steps={steps}); pass fewer steps or more "
                             "batches") from None

    return next_batch


def _nonfinite(what: str, value: float, step: int, lr: float) -> FloatingPointError:
    return FloatingPointError(
        f"step {step}: {what} is {value} (not finite); the parameters were not updated at this step. "
        f"Try a lower learning rate (now {lr:g}), gradient clipping (grad_clip=1.0), or check the data "
        "(token ids in range, not every target ignored) and the weights for NaN/inf.")


def _real(v) -> bool:
    """A real number (not a bool, not a string)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _scheduled_lr(schedule: Callable[[int], float], step: int) -> float:
    """schedule(step), checked: a learning rate must be a finite number >= 0."""
    lr = schedule(step)
    if not _real(lr) or not math.isfinite(lr) or lr < 0:
        name = getattr(schedule, "__name__", type(schedule).__name__)
        raise ValueError(f"step {step}: the learning-rate schedule {name}({step}) returned {lr!r}; a schedule must "
                         "return a finite number >= 0 at every step (check its formula, e.g. a division by zero "
                         "when warmup or max_steps is 0); the parameters were not updated at this step")
    return float(lr)


def _evaluate(model, eval_fn: Callable[[Any], dict]) -> dict:
    model.eval()
    try:
        with no_grad():
            metrics = eval_fn(model)
    finally:
        model.train()
    if not isinstance(metrics, dict):
        raise TypeError(f"eval_fn must return a dict of metrics, got {type(metrics).__name__}")
    return metrics


def train(model, batches: Callable[[int], Batch] | Iterable[Batch], *, steps: int, optimizer: Optimizer,
          schedule: Callable[[int], float] | None = None, grad_clip: float | None = 1.0,
          eval_fn: Callable[[Any], dict] | None = None, eval_every: int = 0, log_every: int = 10,
          progress: bool = True, seed: int | None = None, measure_memory: bool = False,
          desc: str = "train", loss_fn: Callable[[Any, Any, Any], Tensor] = causal_lm_loss) -> TrainResult:
    """Train `model` for `steps` optimizer steps and return what was measured.

    batches: a function step -> batch, or an iterable of batches; a batch is a dict with 'input_ids'
    and 'targets' (int arrays, targets may hold -100 = ignore) or a tuple (x, y).
    schedule: step -> learning rate, set on the optimizer before each step (see optim.cosine_schedule).
    eval_fn: model -> dict of metrics, run under no_grad in eval mode every eval_every steps and at the
    end (only at the end when eval_every=0). log_every: refresh the progress bar's loss every this many
    steps; with progress=False print a line every this many steps instead (0: silent).
    loss_fn: (model, x, y) -> scalar loss Tensor; the default, minipeft.loss.causal_lm_loss, is the mean
    next-token cross-entropy over targets != -100, with the LM head run only where a target exists and, where
    the head is a plain matrix, together with the loss in chunks of rows (the full logits never exist).
    seed: reseed minipeft's generator first (dropout), so two runs from equal weights match bit for bit.
    A non-finite loss or gradient norm raises FloatingPointError before the parameters are touched.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if grad_clip is not None and not (_real(grad_clip) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a number > 0 or None (no clipping), got {grad_clip!r}")
    for name, every in (("eval_every", eval_every), ("log_every", log_every)):
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 0:
            raise ValueError(f"{name} must be an int >= 0 (0: never), got {every!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (model, x, y) -> loss, got {type(loss_fn).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a minipeft.optim optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    if not any(id(p) in own for p in optimizer.params()):
        raise ValueError(f"the optimizer holds none of this {type(model).__name__}'s parameters, so training would "
                         "change nothing; build it from this model: AdamW(model.parameters(trainable_only=True))")
    if seed is not None:
        backend.manual_seed(seed)
    get_batch = _batch_source(batches, steps)
    params = optimizer.params()
    result = TrainResult()
    model.train()
    optimizer.zero_grad()
    bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, leave=True)
    mem = PeakMemory() if measure_memory else None
    t0 = time.perf_counter()
    tokens = 0
    try:
        if mem is not None:
            mem.__enter__()
        for step in range(steps):
            if schedule is not None:
                optimizer.lr = _scheduled_lr(schedule, step)
            x, y = _unpack(get_batch(step), step)
            loss = loss_fn(model, x, y)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                optimizer.zero_grad()
                raise _nonfinite("the loss", loss_value, step, optimizer.lr)
            loss.backward()
            del loss  # the graph holds every op output it read: drop it now, not when the next forward replaces it
            if mem is not None:
                mem.sample()  # activations and gradients are both alive here
            norm = clip_grad_norm_(params, grad_clip or math.inf)  # inf: measure only
            if not math.isfinite(norm):
                optimizer.zero_grad()
                raise _nonfinite("the gradient norm", norm, step, optimizer.lr)
            optimizer.step()
            optimizer.zero_grad()
            result.losses.append(loss_value)
            result.grad_norms.append(norm)
            tokens = tokens + (y != IGNORE_INDEX).sum()           # stays on the device; read when logged
            done = step + 1
            if eval_fn is not None and ((eval_every and done % eval_every == 0) or done == steps):
                result.eval_history.append((done, _evaluate(model, eval_fn)))
            if log_every and (done % log_every == 0 or done == steps):
                result.tokens_seen = int(tokens)
                elapsed = time.perf_counter() - t0
                info = {"loss": f"{loss_value:.4f}", "tok/s": f"{result.tokens_seen / max(elapsed, 1e-9):.0f}",
                        "lr": f"{optimizer.lr:.2e}"}
                if progress:
                    bar.set_postfix(info, refresh=False)
                else:
                    print(f"{desc} step {done}/{steps}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
            bar.update(1)
    finally:
        if mem is not None:
            mem.__exit__(None, None, None)
        bar.close()
    result.tokens_seen = int(tokens)
    result.wall_time_s = time.perf_counter() - t0
    result.tokens_per_s = result.tokens_seen / max(result.wall_time_s, 1e-9)
    result.peak_memory_bytes = None if mem is None else mem.peak_bytes
    return result
