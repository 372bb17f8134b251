"""Double quantization (QLoRA, section 3): quantize the NF4 block scales themselves, to 8 bits.

Plain NF4 keeps one float32 absmax per 64 weights: 32/64 = 0.5 extra bits per parameter. Double
quantization treats those constants c (one per block) as data and quantizes them again, in blocks of 256:

    m = mean(c)                       one float32 per tensor: the constants are all positive, so centring
                                      them around 0 lets a symmetric code use both signs
    r = c - m                         (nblocks,), padded with zeros to a multiple of 256
    s_j = max over block j of |r|     one float32 per 256 constants ("nested absmax")
    q = round(127 r / s_j)            int8 in [-127, 127], one per constant
    c_hat = q s_j / 127 + m           what dequantization uses in place of c

Cost: 8/64 + 32/(64 * 256) = 0.127 bits per parameter instead of 0.5 (plus the one 32-bit mean per
tensor), the figure QLoRA gives.

Which 8-bit code. QLoRA says "8-bit Floats"; bitsandbytes stores them with its dynamic 8-bit map (a
float-like code, denser near 0). We use a uniform symmetric int8 code, the same blockwise absmax idea
as level one with 255 evenly spaced levels instead of NF4's 16 quantiles, because:
- its error has one simple bound, |c_hat - c| <= s_j / 254 (half a step of s_j / 127), tested;
- the constants that matter most are the largest (they scale the biggest weights), and near the top of
  the range a uniform code is finer than a float-like one, which spends its levels near zero;
- the storage is the same 8 bits, so the accounting above is unchanged.
The effect on a weight: |w - code * c_hat| <= |w - code * c| + |code| |c - c_hat| <= half_gap * c + s_j / 254,
since |code| <= 1 (see nf4.py for half_gap).
"""

from __future__ import annotations

import numpy as np

from minipeft import backend

NESTED_BLOCKSIZE = 256
LEVELS = 127    # int8 codes -127..127: symmetric, so r = 0 is stored exactly


def check_nested_blocksize(blocksize) -> None:
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize < 1:
        raise ValueError(f"nested blocksize must be an int >= 1, got {blocksize!r}; QLoRA uses 256")


def quantize_absmax(absmax, blocksize: int = NESTED_BLOCKSIZE):
    """(q int8 (n,), nested_absmax (ceil(n/blocksize),), offset (1,)) for the float block constants `absmax`."""
    check_nested_blocksize(blocksize)
    if absmax.ndim != 1 or absmax.dtype.kind != "f" or absmax.size == 0:
        raise TypeError(f"quantize_absmax: need a non-empty 1-D float array of block constants, got "
                        f"{absmax.dtype} of shape {absmax.shape}")
    xp = backend.xp()
    n = absmax.shape[0]
    offset = absmax.mean(keepdims=True)                                # (1,) the mean constant
    r = absmax - offset                                                # (n,) centred
    pad = (-n) % blocksize                                             # the last nested block may be short
    rp = xp.concatenate([r, xp.zeros(pad, dtype=r.dtype)]) if pad else r
    nested = xp.abs(rp.reshape(-1, blocksize)).max(axis=1)             # (nn,) s_j
    s = xp.where(nested > 0, nested, 1)                                # a constant block: all codes 0
    q = xp.rint(rp.reshape(-1, blocksize) / s[:, None] * LEVELS)       # in [-127, 127]: |r| <= s_j
    return q.reshape(-1)[:n].astype(np.int8), nested, offset


def dequantize_absmax(q, nested_absmax, offset, blocksize: int = NESTED_BLOCKSIZE, dtype=None):
    """c_hat (n,) = q * s_j / 127 + m, in `dtype` (default: nested_absmax's)."""
    dtype = nested_absmax.dtype if dtype is None else dtype
    n = q.shape[0]
    if nested_absmax.shape != (-(-n // blocksize),) or offset.shape != (1,):
        raise ValueError(f"dequantize_absmax: {n} codes need {-(-n // blocksize)} nested scales (blocks of "
                         f"{blocksize}) and a (1,) offset, got {nested_absmax.shape} and {offset.shape}")
    step = nested_absmax.astype(dtype) / np.dtype(dtype).type(LEVELS)   # (nn,) s_j / 127
    per_code = backend.xp().repeat(step, blocksize)[:n]                # (n,) the step of each code's block
    return q.astype(dtype) * per_code + offset.astype(dtype)


def absmax_error_bound(nested_absmax, n: int, blocksize: int = NESTED_BLOCKSIZE):
    """(n,) the bound s_j / 254 on |c_hat - c| of each constant (half a step of its nested block)."""
    return backend.xp().repeat(nested_absmax / (2 * LEVELS), blocksize)[:n]
