"""The NF4 dequantization's fast path: one lookup per byte instead of unpacking it first.

A byte holds two codes, so there are only 256 possible (high, low) pairs of values. A (256, 2) table
of (code[byte >> 4], code[byte & 15]) turns the reference's three passes (split the nibbles into a new
index array, look each index up, multiply) into one gather that writes both values of each byte
straight into the output, and one in-place multiply by the block scales. Same values bit for bit
(the same table entries, the same product); registered as dequantize_nf4_into's fast path and tested
equal to it (tests/test_fast_ops.py). Measured: BENCHMARKS.md, "QLoRA".
"""

from __future__ import annotations

import numpy as np

from minipeft import backend
from minipeft.ops.fastpath import fast_path_of
from minipeft.quant.nf4 import NF4_CODE, dequantize_nf4_into

_pairs: dict = {}


def pair_table(dtype):
    """(256, 2): row b is (code[b >> 4], code[b & 15]), on the device, in `dtype` (cached)."""
    key = (id(backend.xp()), np.dtype(dtype).str)
    if key not in _pairs:
        b = np.arange(256)
        _pairs[key] = backend.asarray(np.stack([NF4_CODE[b >> 4], NF4_CODE[b & 15]], axis=1).astype(dtype))
    return _pairs[key]


@fast_path_of(dequantize_nf4_into)
def dequantize_nf4_pairs_into(out, packed, absmax, blocksize: int = 64) -> None:
    flat = out.reshape(-1, 2)                                        # (n/2, 2) a view: byte i's two values
    backend.xp().take(pair_table(out.dtype), packed, axis=0, out=flat)
    blocks = out.reshape(-1, blocksize)                              # (nblocks, blocksize) a view
    blocks *= absmax.astype(out.dtype)[:, None]
