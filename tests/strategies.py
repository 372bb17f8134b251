"""Hypothesis strategies for the op tests: shapes, arrays, and inputs shifted into each op's domain.

Like minitorch's tensor_strategies: values are drawn from one moderate range and then *moved*
into an op's valid domain (log's argument positive, a divisor away from zero) rather than
filtered, so no example is thrown away. Sizes stay tiny: a gradient check costs two forward
passes per input element.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

LO, HI = -2.0, 2.0  # moderate magnitudes: exp, pow and softmax stay well-conditioned

values = st.floats(LO, HI, allow_nan=False, allow_infinity=False, width=64)


def shapes(min_dims: int = 1, max_dims: int = 4, max_side: int = 5, max_size: int = 64):
    """Array shapes with 1-4 dims of sizes 1-5, at most max_size elements."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side).filter(
        lambda s: int(np.prod(s)) <= max_size)


def arrays(shape):
    """A float64 array of the given shape, entries uniform-ish in [-2, 2]."""
    return hnp.arrays(np.float64, shape, elements=values)


@st.composite
def array_and_shape(draw, **shape_kw):
    return draw(arrays(draw(shapes(**shape_kw))))


# ---- moving values into an op's domain (never filtering) ---------------------------------------
def positive(a: np.ndarray) -> np.ndarray:
    """[-2, 2] -> [0.5, 2.5]: arguments of log, bases of pow."""
    return np.abs(a) + 0.5


def away_from_zero(a: np.ndarray, gap: float = 0.5) -> np.ndarray:
    """|a| >= gap, sign kept (0 goes positive): divisors, and relu's kink stays out of reach of eps."""
    return np.where(a >= 0, a + gap, a - gap)


# ---- shape pairs --------------------------------------------------------------------------------
@st.composite
def broadcastable_shapes(draw, max_dims: int = 3, max_side: int = 4):
    """Two shapes that broadcast together, e.g. (3, 1, 4) and (2, 1)."""
    bs = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=max_dims,
                                                min_side=1, max_side=max_side))
    return bs.input_shapes


@st.composite
def matmul_shapes(draw, max_batch_dims: int = 2):
    """(a.shape, b.shape) with a (..., n, k) @ b (..., k, m); batch dims broadcast (possibly absent)."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    bs = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_batch_dims,
                                                min_side=1, max_side=3))
    sa, sb = bs.input_shapes
    return (*sa, n, k), (*sb, k, m)


def token_ids(vocab: int, shape):
    """Integer ids in [0, vocab) (repeats likely for a small vocab)."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, vocab - 1))


@st.composite
def attention_shapes(draw, max_T: int = 4):
    """(B, T, H, hs) for a small multi-head attention."""
    return (draw(st.integers(1, 2)), draw(st.integers(1, max_T)), draw(st.integers(1, 2)),
            draw(st.integers(1, 3)))


@st.composite
def axes_for(draw, ndim: int):
    """An `axis` argument for a reduction: None, one int (maybe negative), or a tuple of axes."""
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))
