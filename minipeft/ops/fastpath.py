"""The one switch between the reference ops and their fast paths.

Every op has a reference implementation: the textbook forward and backward a student reads. Some
also have a fast path (blocked attention, chunked GELU, a folded LoRA product, ...) that computes
the same numbers with fewer passes over memory. A fast path registers itself here against its
reference with `@fast_path_of(Reference)`; the ops' functional wrappers call `pick(Reference)`,
which returns the fast path when fast ops are on (the default) and the reference otherwise.

    minipeft.set_fast_ops(False)        # every op from now on runs its reference implementation
    with minipeft.fast_ops(False): ...  # only inside the block
    MINIPEFT_FAST_OPS=0 pytest          # the whole process, e.g. the test suite on the reference path

The tests check every registered pair equal (forward and gradients, float64). Measured speed-ups
are in BENCHMARKS.md, "Fast paths".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled = [os.environ.get("MINIPEFT_FAST_OPS", "1").strip().lower() not in ("0", "false", "no", "off")]
_FAST: dict = {}   # reference (a Function class or a function) -> its fast path


def set_fast_ops(enabled: bool) -> None:
    """Turn the fast paths on (default) or off; off, every op runs its reference implementation."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fast_ops takes True or False, got {enabled!r}")
    _enabled[0] = enabled


def fast_ops_enabled() -> bool:
    """Whether ops currently take their fast paths."""
    return _enabled[0]


@contextlib.contextmanager
def fast_ops(enabled: bool) -> Iterator[None]:
    """Fast paths on or off inside the block only."""
    prev = _enabled[0]
    set_fast_ops(enabled)
    try:
        yield
    finally:
        _enabled[0] = prev


def fast_path_of(reference) -> Callable[[T], T]:
    """Decorator: register the decorated Function class (or function) as `reference`'s fast path."""

    def register(fast: T) -> T:
        if reference in _FAST:
            raise ValueError(f"{getattr(reference, '__name__', reference)} already has a fast path: "
                             f"{getattr(_FAST[reference], '__name__', _FAST[reference])}")
        _FAST[reference] = fast
        return fast

    return register


def pick(reference):
    """The implementation to run now: `reference`'s fast path if it has one and fast ops are on."""
    return _FAST.get(reference, reference) if _enabled[0] else reference


def fast_paths() -> dict:
    """{reference: fast path} for every registered pair (what the equality tests walk)."""
    return dict(_FAST)
