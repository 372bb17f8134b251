"""NormalFloat4 (NF4, Dettmers et al. 2023, "QLoRA"): the 16-value code book and blockwise absmax quantization.

The code book
-------------
Pretrained weights are close to zero-centred normal. A 4-bit code has 16 values; to lose the least, each
value should stand for the same share of weights, so the codes sit at quantiles of N(0, 1), normalized
into [-1, 1] (QLoRA section 3 writes the symmetric formula q_i = (Q(i / (2^k + 1)) + Q((i + 1) / (2^k + 1))) / 2;
the published NF4 values come from the construction below, bitsandbytes' `create_normal_map(offset=0.9677083)`).
Two details make it NF4 rather than plain quantiles:

1. An exact zero (zero weights, padding and all-zero blocks dequantize to exactly 0). So the two halves
   are built apart and share the 0: 8 positive codes from 9 quantiles of the upper half (the last, the
   median, is the 0) and 7 negative codes from 8 of the lower half. NF4 is therefore asymmetric: 7
   negative values, 0, 8 positive.
2. The extreme quantiles of a normal are infinite, so the outermost probability is pulled in by
   delta = (1/32 + 1/30) / 2, the mean of half a bin of a 16-bin and of a 15-bin split of [0, 1] (bitsandbytes
   gives only the value; its GitHub thread issues/968 asks where it comes from): the positive half takes the quantiles
   Phi^-1(p) at p = linspace(1 - delta, 1/2, 9)[:-1], the negative half -Phi^-1(p) at
   p = linspace(1 - delta, 1/2, 8)[:-1]; then every value is divided by the largest, Phi^-1(1 - delta)
   ~= 1.848, so the outermost codes are exactly -1 and 1.

The published values (QLoRA, appendix E; bitsandbytes' kernels) are that construction computed in float32
(`1 - delta` written 0.9677083). They are `NF4_CODE` below; tests/test_nf4.py re-derives them from normal
quantiles (`statistics.NormalDist`) and checks them to float32 rounding.

Blockwise absmax quantization
-----------------------------
The weight is flattened (row-major) into blocks of `blocksize` (64 by default) consecutive values. Each
block is divided by its absmax a = max|w| into [-1, 1], each value is replaced by the index (0..15) of the
nearest code, and w_hat = code[index] * a. Small blocks keep one outlier from flattening a whole matrix.
Two 4-bit indices are packed per uint8, the first in the high nibble (as bitsandbytes does).

Error: a normalized value v lies between two neighbouring codes, so |v - code| <= half their gap, and
|w - w_hat| <= (half the gap around w's code) * a <= max_half_gap() * a, with max_half_gap() =
(1 - 0.6961928) / 2 ~= 0.152 (the widest gap is the outermost negative one). The element equal to +-a
is stored exactly (code +-1).

Everything here is vectorized on the active backend (NumPy or CuPy): no Python loop over blocks.
"""

from __future__ import annotations

import numpy as np

from minipeft import backend
from minipeft.ops.fastpath import pick

# The 16 NF4 values, ascending, exactly as QLoRA (appendix E) and bitsandbytes (csrc/kernels.cu) list them.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=np.float32)
NF4_CODE.flags.writeable = False
ZERO_INDEX = 7                                          # NF4_CODE[7] == 0.0 exactly
NF4_OFFSET = 0.9677083                                  # 1 - delta, as the published construction writes it

_device_tables: dict = {}


def max_half_gap() -> float:
    """Half the widest gap between neighbouring NF4 codes: the worst-case error of a normalized value."""
    return float(np.diff(NF4_CODE.astype(np.float64)).max() / 2)


def nf4_code(dtype=np.float32):
    """The code book on the active device, in `dtype` (cached: no host-to-device copy per call)."""
    key = (id(backend.xp()), np.dtype(dtype).str, "code")
    if key not in _device_tables:
        _device_tables[key] = backend.asarray(NF4_CODE.astype(dtype))
    return _device_tables[key]


def _midpoints(dtype):
    """The 15 decision thresholds (c_i + c_{i+1}) / 2 on the device: v maps to the number of them below v."""
    key = (id(backend.xp()), np.dtype(dtype).str, "mid")
    if key not in _device_tables:
        c = NF4_CODE.astype(np.float64)
        _device_tables[key] = backend.asarray(((c[:-1] + c[1:]) / 2).astype(dtype))
    return _device_tables[key]


def check_blocksize(n: int, blocksize, what: str = "weight") -> None:
    """blocksize: an even int >= 2 that divides n; a clear error otherwise."""
    if not isinstance(blocksize, (int, np.integer)) or isinstance(blocksize, bool) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize must be an even int >= 2 (two 4-bit codes share a byte), got {blocksize!r}; "
                         "QLoRA uses 64")
    if n % blocksize:
        raise ValueError(f"blocksize {blocksize} does not divide the {what}'s {n} values; pick a blocksize that "
                         f"divides {n} (64 divides every matrix whose size is a multiple of 64), or leave this "
                         "module unquantized")


def check_weight(w) -> None:
    """A floating (float32/float64) array of at least one element, every value finite."""
    if not hasattr(w, "dtype") or w.dtype not in (np.float32, np.float64):
        raise TypeError(f"NF4 quantizes float32 or float64 arrays, got {getattr(w, 'dtype', type(w).__name__)}; "
                        "cast the weight first (w.astype(np.float32))")
    if w.size == 0:
        raise ValueError("NF4: cannot quantize an empty array")
    if not bool(backend.xp().isfinite(w).all()):
        raise ValueError("NF4: the weight holds NaN or inf, which no block scale can represent; fix the weight "
                         "(a diverged training run?) before quantizing")


def pack_4bit(codes):
    """(n,) indices 0..15 -> (n/2,) uint8, codes[2i] in the high nibble and codes[2i+1] in the low one."""
    if codes.ndim != 1 or codes.shape[0] % 2:
        raise ValueError(f"pack_4bit: need a 1-D array of even length, got shape {codes.shape}")
    c = codes.astype(np.uint8)
    return (c[0::2] << 4) | c[1::2]


def unpack_4bit(packed):
    """(n/2,) uint8 -> (n,) uint8 indices 0..15: the inverse of pack_4bit."""
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"unpack_4bit: need a 1-D uint8 array, got {packed.dtype} of shape {packed.shape}")
    xp = backend.xp()
    return xp.stack([packed >> 4, packed & 15], axis=1).reshape(-1)   # (n/2, 2) -> (n,) high then low


def quantize_blockwise(w, blocksize: int = 64):
    """(indices (n,) uint8, absmax (n/blocksize,)) of w flattened: index of the code nearest w / block absmax."""
    check_weight(w)
    check_blocksize(w.size, blocksize)
    xp = backend.xp()
    blocks = w.reshape(-1, blocksize)                                 # (nblocks, blocksize)
    absmax = xp.abs(blocks).max(axis=1)                               # (nblocks,)
    scale = xp.where(absmax > 0, absmax, 1)                           # an all-zero block divides by 1: all codes 0
    normed = blocks / scale[:, None]                                  # in [-1, 1]; the absmax element is exactly +-1
    # the nearest code = how many thresholds lie below v (a tie, v on a threshold, takes the lower code)
    idx = xp.searchsorted(_midpoints(w.dtype), normed.reshape(-1), side="left")
    return idx.astype(np.uint8), absmax


def dequantize_blockwise(indices, absmax, blocksize: int, dtype=None):
    """code[indices] * absmax of each index's block, flat (n,); dtype defaults to absmax's."""
    dtype = absmax.dtype if dtype is None else dtype
    values = nf4_code(dtype)[indices]                                 # (n,) gather from the 16-entry table
    return (values.reshape(-1, blocksize) * absmax.astype(dtype)[:, None]).reshape(-1)


def dequantize_nf4_into(out, packed, absmax, blocksize: int = 64) -> None:
    """out[...] = the weight (packed, absmax) stands for: unpack the two codes of each byte, look each up, scale.

    The reference; nf4_fast.py looks up both values of a byte at once (set_fast_ops chooses, as for every op).
    """
    out[...] = dequantize_blockwise(unpack_4bit(packed), absmax, blocksize, out.dtype).reshape(out.shape)


def quantize_nf4(w, blocksize: int = 64):
    """(packed uint8 (n/2,), absmax (n/blocksize,)): w in NF4, two codes per byte."""
    idx, absmax = quantize_blockwise(w, blocksize)
    return pack_4bit(idx), absmax


def dequantize_nf4(packed, absmax, shape: tuple[int, ...], blocksize: int = 64, dtype=None):
    """The float array of `shape` that (packed, absmax) stands for: code[index] * block absmax."""
    n = int(np.prod(shape))
    if packed.shape != (n // 2,) or n % 2 or absmax.shape != (n // blocksize,) or n % blocksize:
        raise ValueError(f"dequantize_nf4: packed {packed.shape} and absmax {absmax.shape} do not fit shape {shape} "
                         f"with blocksize {blocksize}; need packed ({n // 2},) and absmax ({n // blocksize},)")
    out = backend.xp().empty(shape, dtype=absmax.dtype if dtype is None else dtype)
    pick(dequantize_nf4_into)(out, packed, absmax, blocksize)
    return out
