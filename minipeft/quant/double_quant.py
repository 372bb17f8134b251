"""Double quantization (QLoRA, section 3): quantize the NF4 block scales themselves, to 8 bits, as bitsandbytes does.

Plain NF4 keeps one float32 absmax per 64 weights: 32/64 = 0.5 extra bits per parameter. Double
quantization treats those constants c (one per block) as data and quantizes them again, in blocks of 256,
with bitsandbytes' `quantize_blockwise` and its dynamic 8-bit code (QLoRA's "8-bit Floats"):

    m = mean(c)                       one float32 per tensor: the constants are all positive, so centring
                                      them around 0 lets a signed code use both signs
    r = c - m                         (nblocks,), the last nested block may be short
    s_j = max over block j of |r|     one float32 per 256 constants ("nested absmax")
    q = argmin_k |clamp(r * (1/s_j), -1, 1) - code[k]|   uint8, the index of the nearest of 256 code values
    c_hat = code[q] * s_j + m         what dequantization uses in place of c

Cost: 8/64 + 32/(64 * 256) = 0.127 bits per parameter instead of 0.5 (plus the one 32-bit mean per
tensor), the figure QLoRA gives.

The dynamic code (`dynamic_map`, bitsandbytes' `create_dynamic_map(signed=True)`, Dettmers 2015): a sign,
then a decimal exponent e = 0..6 written in unary, then the remaining bits as a linear fraction, so code
values are 10^-e times the midpoints of 2^(6-e) equal steps of [0.1, 1]. Small magnitudes get few, widely
spread levels over six decades; the top decade [0.1, 1] gets 64 levels per sign. With 0 and 1.0 that makes
127 negative values, 0 and 128 positive ones: 256. The error of one constant is at most half the widest gap
between neighbouring code values, times s_j (`absmax_error_bound`).

What equals bitsandbytes here: the code (each value rounded once to float32, as torch's linspace does on the
CPU), the nested absmax, the codes q and c_hat, bit for bit in float32 for the same mean m. The mean itself is
NumPy's float32 sum; torch sums in another order, so bitsandbytes' m may differ in its last bit, and c_hat
with it.
"""

from __future__ import annotations

import numpy as np

from minipeft import backend

NESTED_BLOCKSIZE = 256


def dynamic_map() -> np.ndarray:
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted float32 values.

    For e = 6, 5, ..., 0 (exponent index i = 6 - e): the 2^i + 1 points b of linspace(0.1, 1) (in float32, each
    rounded once from start + k * step, from the nearer end, as torch computes it), their 2^i midpoints
    (b_k + b_k+1) / 2, times 10^-e, with both signs; then 0 and 1.
    """
    f32 = np.float32
    values = [f32(0), f32(1)]
    for i in range(7):
        steps = 2**i + 1
        start, end = f32(0.1), f32(1.0)
        step = (end - start) / f32(steps - 1)
        k = np.arange(steps)
        # start + step * k (or end - step * (steps-1-k) for the upper half) with one rounding: exact in float64
        points = np.where(k < steps // 2, np.float64(start) + np.float64(step) * k,
                          np.float64(end) - np.float64(step) * (steps - 1 - k)).astype(f32)
        means = (points[:-1] + points[1:]) / f32(2)                       # float32, as torch
        scaled = f32(10.0 ** (i - 6)) * means
        values += [*scaled, *(-scaled)]
    return np.sort(np.array(values, dtype=f32))


def check_nested_blocksize(blocksize) -> None:
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize < 1:
        raise ValueError(f"nested blocksize must be an int >= 1, got {blocksize!r}; QLoRA uses 256")


DYNAMIC_MAP = dynamic_map()
DYNAMIC_MAP.flags.writeable = False
_device_tables: dict = {}


def _code(dtype):
    """The dynamic map on the active device, in `dtype` (cached: no host-to-device copy per call)."""
    key = (id(backend.xp()), np.dtype(dtype).str)
    if key not in _device_tables:
        _device_tables[key] = backend.asarray(DYNAMIC_MAP.astype(dtype))
    return _device_tables[key]


def quantize_absmax(absmax, blocksize: int = NESTED_BLOCKSIZE):
    """(q uint8 (n,), nested_absmax (ceil(n/blocksize),), offset (1,)) for the float block constants `absmax`."""
    check_nested_blocksize(blocksize)
    if absmax.ndim != 1 or absmax.dtype.kind != "f" or absmax.size == 0:
        raise TypeError(f"quantize_absmax: need a non-empty 1-D float array of block constants, got "
                        f"{absmax.dtype} of shape {absmax.shape}")
    xp = backend.xp()
    n, dt = absmax.shape[0], absmax.dtype
    offset = absmax.mean(keepdims=True)                                # (1,) the mean constant
    r = absmax - offset                                                # (n,) centred
    pad = (-n) % blocksize                                             # the last nested block may be short
    rp = xp.concatenate([r, xp.zeros(pad, dtype=dt)]) if pad else r   # zeros change no block's max
    nested = xp.abs(rp.reshape(-1, blocksize)).max(axis=1)             # (nn,) s_j
    inv = dt.type(1) / xp.where(nested > 0, nested, 1)                 # a constant block: all r = 0, code 0
    scaled = xp.clip(rp.reshape(-1, blocksize) * inv[:, None], -1, 1).reshape(-1)[:n]   # (n,) in [-1, 1]
    q = xp.abs(scaled[:, None] - _code(dt)[None, :]).argmin(axis=1)   # (n,) nearest code value; ties: the lower
    return q.astype(np.uint8), nested, offset


def dequantize_absmax(q, nested_absmax, offset, blocksize: int = NESTED_BLOCKSIZE, dtype=None):
    """c_hat (n,) = code[q] * s_j + m, in `dtype` (default: nested_absmax's)."""
    dtype = nested_absmax.dtype if dtype is None else dtype
    n = q.shape[0]
    if nested_absmax.shape != (-(-n // blocksize),) or offset.shape != (1,):
        raise ValueError(f"dequantize_absmax: {n} codes need {-(-n // blocksize)} nested scales (blocks of "
                         f"{blocksize}) and a (1,) offset, got {nested_absmax.shape} and {offset.shape}")
    if q.dtype != np.uint8:
        raise TypeError(f"dequantize_absmax: the codes must be uint8 indices into the dynamic map, got {q.dtype}")
    per_code = backend.xp().repeat(nested_absmax.astype(dtype), blocksize)[:n]   # (n,) s_j of each code's block
    return _code(dtype)[q.astype(np.int64)] * per_code + offset.astype(dtype)


def max_half_gap_dynamic() -> float:
    """The largest |x - nearest code value| over x in [-1, 1]: half the widest gap, or the clamp at -1."""
    code = DYNAMIC_MAP.astype(np.float64)
    return float(max(np.diff(code).max() / 2, code[0] + 1))


def absmax_error_bound(nested_absmax, n: int, blocksize: int = NESTED_BLOCKSIZE):
    """(n,) the bound s_j * max_half_gap_dynamic() on |c_hat - c| of each constant."""
    return backend.xp().repeat(nested_absmax * max_half_gap_dynamic(), blocksize)[:n]
