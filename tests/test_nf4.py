"""NF4 and double quantization (minipeft/quant/): the code book, packing, the error bounds, the bits per parameter.

Tolerances. Quantization itself is exact arithmetic on indices; only the float steps round. Normalizing
w / absmax, the product code * absmax, and double quantization's code[q] * s + m each round once in the
array's dtype, so every bound below is the exact bound plus a few units of that dtype's eps times the
magnitude involved (FLOAT_SLACK ulps, with a factor of two of margin over the three or four roundings).
"""

from __future__ import annotations

from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minipeft import backend, fast_ops, to_numpy
from minipeft.nn import GPT, GPTConfig
from minipeft.peft import ConfigError
from minipeft.quant import (
    NF4_CODE,
    BitsAndBytesConfig,
    Linear4bit,
    bits_per_parameter,
    dequantize_absmax,
    dequantize_nf4,
    max_half_gap,
    model_bytes,
    pack_4bit,
    quantize_absmax,
    quantize_model,
    quantize_nf4,
    unpack_4bit,
    weight_bytes,
)
from minipeft.quant.double_quant import absmax_error_bound, dynamic_map, max_half_gap_dynamic
from minipeft.quant.nf4 import NF4_OFFSET, ZERO_INDEX, dequantize_blockwise, quantize_blockwise
from minipeft.quant.storage import bytes_from_shapes, gpt_matrices

FLOAT_SLACK = 8   # ulps of the dtype, times the magnitude, on top of each exact bound (see the module docstring)


def dev(a):
    return backend.asarray(np.asarray(a))


# ---- the code book ------------------------------------------------------------------------------------------------
def derive_nf4(offset: float, dtype) -> np.ndarray:
    """NF4 from its definition: quantiles of N(0, 1), 8 positive from linspace(offset, 1/2, 9)[:-1], 7 negative
    from linspace(offset, 1/2, 8)[:-1], a shared exact 0, all divided by the largest."""
    ppf = NormalDist().inv_cdf
    pos = [ppf(float(p)) for p in np.linspace(offset, 0.5, 9, dtype=dtype)[:-1]]
    neg = [-ppf(float(p)) for p in np.linspace(offset, 0.5, 8, dtype=dtype)[:-1]]
    v = np.sort(np.array(pos + [0.0] + neg))
    return v / v.max()


def test_code_book_is_nf4_asymmetric_with_an_exact_zero():
    c = NF4_CODE
    assert c.dtype == np.float32 and c.shape == (16,) and np.all(np.diff(c) > 0)
    assert c[0] == -1.0 and c[-1] == 1.0 and c[ZERO_INDEX] == 0.0
    assert (c < 0).sum() == 7 and (c > 0).sum() == 8
    assert c[-2] == np.float32(0.7229568362236023) and c[1] == np.float32(-0.6961928009986877)  # QLoRA appendix E


@pytest.mark.parametrize("offset, dtype, tol", [
    # bitsandbytes' construction, float32 linspace: equal up to one float32 ulp of the division (~6e-8 at 0.7)
    (NF4_OFFSET, np.float32, 2.5e-7),
    # the exact definition, delta = (1/32 + 1/30) / 2 in float64: the published values are float32 computations
    # of it; the linspace points' float32 rounding (~6e-8) times the quantile's slope 1/phi(1.85) ~ 14, over 1.85
    (1 - (1 / 32 + 1 / 30) / 2, np.float64, 5e-7),
])
def test_code_book_rederived_from_normal_quantiles(offset, dtype, tol):
    derived = derive_nf4(offset, dtype)
    assert np.abs(derived - NF4_CODE.astype(np.float64)).max() <= tol
    assert (derived > 0).sum() == 8 and (derived < 0).sum() == 7


def test_nf4_codes_are_used_more_evenly_than_a_uniform_4bit_code_on_normal_weights():
    """Quantile codes: normally distributed weights spread over the 16 codes (entropy near the 4-bit maximum),
    where 16 evenly spaced levels leave the outer ones nearly unused."""
    w = np.random.default_rng(0).standard_normal(64 * 4000).astype(np.float32)
    idx, _ = quantize_blockwise(dev(w), 64)
    counts = np.bincount(to_numpy(idx), minlength=16) / w.size
    blocks = w.reshape(-1, 64)
    uniform = np.linspace(-1, 1, 16)
    u_idx = np.searchsorted((uniform[1:] + uniform[:-1]) / 2, (blocks / np.abs(blocks).max(1, keepdims=True)).ravel())
    u_counts = np.bincount(u_idx, minlength=16) / w.size

    def entropy(p):
        return -(p[p > 0] * np.log2(p[p > 0])).sum()

    assert entropy(counts) > 3.85 and entropy(counts) > entropy(u_counts) + 0.2
    assert counts.min() > 0.01


def test_dequantization_fast_path_is_bit_identical_to_the_reference():
    w = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    packed, absmax = quantize_nf4(dev(w), 64)
    with fast_ops(False):
        ref = to_numpy(dequantize_nf4(packed, absmax, w.shape))
    with fast_ops(True):
        fast = to_numpy(dequantize_nf4(packed, absmax, w.shape))
    np.testing.assert_array_equal(fast, ref)


# ---- packing ------------------------------------------------------------------------------------------------------
def test_pack_puts_the_first_code_in_the_high_nibble():
    np.testing.assert_array_equal(to_numpy(pack_4bit(dev(np.array([1, 2, 15, 0], dtype=np.uint8)))), [0x12, 0xF0])


@given(st.lists(st.integers(0, 15), min_size=1, max_size=200).map(lambda v: v + [0] * (len(v) % 2)))
def test_pack_unpack_round_trip_is_exact(codes):
    c = np.array(codes, dtype=np.uint8)
    packed = pack_4bit(dev(c))
    assert packed.dtype == np.uint8 and packed.shape == (len(c) // 2,)
    np.testing.assert_array_equal(to_numpy(unpack_4bit(packed)), c)
    np.testing.assert_array_equal(to_numpy(pack_4bit(unpack_4bit(packed))), to_numpy(packed))


# ---- blockwise quantization: exact structure and error bounds -----------------------------------------------------
@st.composite
def weights(draw):
    """(w, blocksize): a float32 or float64 matrix whose size the block size divides, from one of several
    distributions, with all-zero blocks and single outliers mixed in."""
    blocksize = draw(st.sampled_from([2, 4, 8, 16, 64, 128]))
    nblocks = draw(st.integers(1, 12))
    rows = draw(st.sampled_from([d for d in (1, 2, 4) if (nblocks * blocksize) % d == 0]))
    shape = (rows, nblocks * blocksize // rows)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["normal", "uniform", "student_t", "tiny", "constant"]))
    w = {"normal": lambda: rng.standard_normal(shape) * 0.02, "uniform": lambda: rng.uniform(-3, 3, shape),
         "student_t": lambda: rng.standard_t(2, shape), "tiny": lambda: rng.standard_normal(shape) * 1e-30,
         "constant": lambda: np.full(shape, -0.5)}[kind]()
    flat = w.reshape(-1, blocksize)
    if draw(st.booleans()):
        flat[rng.integers(0, nblocks)] = 0.0                                   # an all-zero block
    if draw(st.booleans()):
        flat[rng.integers(0, nblocks), rng.integers(0, blocksize)] = 1e3      # a single outlier
    return w.astype(draw(st.sampled_from([np.float32, np.float64]))), blocksize


def reference_dequantize(idx: np.ndarray, absmax: np.ndarray, blocksize: int) -> np.ndarray:
    """code[idx] * absmax of the block, written out in NumPy (the spec of dequantize_blockwise)."""
    return (NF4_CODE.astype(absmax.dtype)[idx].reshape(-1, blocksize) * absmax[:, None]).reshape(-1)


@given(weights())
def test_every_dequantized_value_is_a_code_times_its_block_absmax(case):
    w, bs = case
    idx, absmax = quantize_blockwise(dev(w), bs)
    idx, absmax = to_numpy(idx), to_numpy(absmax)
    assert idx.dtype == np.uint8 and idx.max() <= 15 and absmax.dtype == w.dtype
    np.testing.assert_array_equal(absmax, np.abs(w.reshape(-1, bs)).max(axis=1))
    got = to_numpy(dequantize_blockwise(dev(idx), dev(absmax), bs))
    np.testing.assert_array_equal(got, reference_dequantize(idx, absmax, bs))


@given(weights())
def test_error_is_within_half_the_widest_code_gap_times_the_block_absmax(case):
    w, bs = case
    packed, absmax = quantize_nf4(dev(w), bs)
    w_hat = to_numpy(dequantize_nf4(packed, absmax, w.shape, bs))
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    a = np.repeat(to_numpy(absmax), bs).reshape(w.shape)
    eps = np.finfo(w.dtype).eps
    err = np.abs(w - w_hat)
    assert np.all(err <= max_half_gap() * a + FLOAT_SLACK * eps * a)
    # tighter, per element: within half the gap around the code it got (no code is nearer than the one chosen)
    v = np.where(a > 0, w / np.where(a > 0, a, 1), 0)
    dist = np.abs(v[..., None] - NF4_CODE.astype(np.float64)).min(axis=-1)
    assert np.all(err <= (dist + FLOAT_SLACK * eps) * a)
    # the block's largest |w| is stored exactly (code +-1), and an all-zero block as exact zeros
    flat_w, flat_hat = w.reshape(-1, bs), w_hat.reshape(-1, bs)
    top = np.abs(flat_w).argmax(axis=1)
    rows = np.arange(flat_w.shape[0])
    np.testing.assert_array_equal(flat_hat[rows, top], flat_w[rows, top])
    zero = ~flat_w.any(axis=1)
    assert np.all(flat_hat[zero] == 0)


# ---- double quantization ------------------------------------------------------------------------------------------
def test_dynamic_map_follows_its_definition():
    """bitsandbytes' create_dynamic_map(signed=True): for e = 6..0, 10^-e times the 2^(6-e) midpoints of equal steps
    of [0.1, 1], both signs, then 0 and 1. Each value is within 2 float32 ulps of the exact one (the linspace point,
    the midpoint sum and the power of ten each round once in float32) and is a float32 value."""
    code = dynamic_map()
    exact = [0.0, 1.0]
    for i in range(7):
        b = 0.1 + np.arange(2**i + 1) * 0.9 / 2**i
        exact += list(10.0 ** (i - 6) * (b[:-1] + b[1:]) / 2) + list(-(10.0 ** (i - 6)) * (b[:-1] + b[1:]) / 2)
    exact = np.sort(exact)
    assert code.dtype == np.float32 and code.shape == (256,) and np.all(np.diff(code) > 0)
    np.testing.assert_allclose(code, exact, rtol=2 * np.finfo(np.float32).eps, atol=0)
    assert (code < 0).sum() == 127 and code[127] == 0 and code[-1] == 1 and code[-2] == np.float32(0.99296875)
    # the top decade's half step, to the float32 rounding of the two code values it lies between
    assert max_half_gap_dynamic() == pytest.approx(0.9 / 64 / 2, abs=2 * float(np.finfo(np.float32).eps))


def _bnb_reference(absmax: np.ndarray, offset: np.float32, blocksize: int):
    """(codes, nested absmax, dequantized constants) as bitsandbytes computes them on the CPU: create_dynamic_map,
    the default quantize_blockwise / dequantize_blockwise kernels and quantize_4bit's nested step, transcribed from
    bitsandbytes' functional.py and backends/default/ops.py, given the same mean `offset`."""
    torch = pytest.importorskip("torch")
    data = []
    for i in range(7):                                        # create_dynamic_map(signed=True, 7, 8)
        boundaries = torch.linspace(0.1, 1, 2**i + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0, 1.0]
    data.sort()
    code = torch.Tensor(data)
    A = torch.from_numpy(absmax) - torch.from_numpy(np.asarray([offset]))
    n = A.numel()
    rem = n % blocksize
    has_rem = rem > 0
    blocks = n // blocksize + has_rem
    nested = torch.zeros((blocks,), dtype=torch.float32)
    A_com = A[: n - rem].reshape(n // blocksize, blocksize)
    nested[: blocks - has_rem] = torch.abs(A_com).max(dim=-1)[0]
    scaled = torch.clamp(A_com * (1 / nested[: blocks - has_rem].view(-1, 1)), -1, 1).reshape(-1)
    if has_rem:
        nested[-1] = torch.abs(A[n - rem:]).max()
        scaled = torch.cat([scaled, torch.clamp(A[n - rem:] * (1 / nested[-1]), -1, 1)], dim=0)
    q = torch.argmin(torch.abs(scaled.unsqueeze(-1) - code), dim=-1).to(torch.uint8)
    out = code[q.int()]
    if rem:
        out = torch.nn.functional.pad(out, (0, blocksize - rem), mode="constant", value=0)
    out = (out.view(-1, blocksize) * nested.view(-1, 1)).reshape(-1)[:n] + torch.from_numpy(np.asarray([offset]))
    return code.numpy(), q.numpy(), nested.numpy(), out.numpy()


@pytest.mark.parametrize("n, nested", [(4096, 256), (700, 256), (37, 4)])
def test_double_quantization_equals_bitsandbytes_bit_for_bit(n, nested):
    rng = np.random.default_rng(n)
    c = np.abs(rng.standard_normal(n) * 0.05).astype(np.float32)
    q, s, m = (to_numpy(a) for a in quantize_absmax(dev(c), nested))
    code, q_ref, s_ref, c_ref = _bnb_reference(c, m[0], nested)
    np.testing.assert_array_equal(dynamic_map(), code)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(to_numpy(dequantize_absmax(dev(q), dev(s), dev(m), nested)), c_ref)


def test_double_quantized_weights_equal_bitsandbytes_dequantization():
    """A Linear4bit's dequantized weight: NF4 codes (bit-identical to bitsandbytes, tested above) times the
    double-quantized scales, which equal bitsandbytes' for the same mean; so the weights are equal too."""
    w = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32) * 0.02
    layer = Linear4bit.from_linear(_linear(w), blocksize=64, double_quant=True, nested_blocksize=256)
    plain = Linear4bit.from_linear(_linear(w), blocksize=64, double_quant=False)
    *_, c_ref = _bnb_reference(to_numpy(plain.absmax.data), to_numpy(layer.offset.data)[0], 256)
    want = to_numpy(dequantize_nf4(plain.weight.data, dev(c_ref), w.shape))
    np.testing.assert_array_equal(to_numpy(layer.dequantize()), want)
    assert to_numpy(layer.absmax.data).dtype == np.uint8


@given(st.integers(1, 700), st.sampled_from([1, 3, 256]), st.integers(0, 2**31), st.booleans())
def test_double_quantized_scales_are_within_half_a_gap_of_the_dynamic_map(n, nested, seed, zeros):
    rng = np.random.default_rng(seed)
    c = np.abs(rng.standard_normal(n) * 0.05).astype(np.float32)
    if zeros:
        c[rng.integers(0, n, size=max(1, n // 5))] = 0.0
    q, s, m = quantize_absmax(dev(c), nested)
    q, s, m = to_numpy(q), to_numpy(s), to_numpy(m)
    assert q.dtype == np.uint8 and q.shape == (n,)
    assert s.shape == (-(-n // nested),) and m.shape == (1,) and s.dtype == m.dtype == np.float32
    # The scales are the spec's, checked on their own: the bound below is s times the map's half gap, so a
    # too-large s would loosen it as much as it loosens the error. m is the mean of the n constants, all >= 0, to
    # float32 summation (relative error <= (n - 1) eps32 / 2 + eps32 / 2 for the division; n eps32 is twice
    # that); s_j is max |c - m| over nested block j, the subtraction and the max done in float32 as the spec
    # says, hence exactly equal.
    mean64 = float(c.astype(np.float64).mean())
    assert abs(float(m[0]) - mean64) <= n * np.finfo(np.float32).eps * mean64
    r = np.concatenate([c - m, np.zeros(-n % nested, np.float32)])
    np.testing.assert_array_equal(s, np.abs(r).reshape(-1, nested).max(axis=1))
    c_hat = to_numpy(dequantize_absmax(dev(q), dev(s), dev(m), nested))
    bound = np.repeat(s * max_half_gap_dynamic(), nested)[:n]
    np.testing.assert_allclose(to_numpy(absmax_error_bound(dev(s), n, nested)), bound, rtol=1e-7)
    slack = FLOAT_SLACK * np.finfo(np.float32).eps * (np.abs(c).max() + np.abs(m[0]))
    assert np.all(np.abs(c_hat - c) <= bound + slack)


@given(weights())
def test_double_quantization_adds_at_most_its_scale_error_to_each_weight(case):
    """|w - code * c_hat| <= half_gap(code) * c + |c - c_hat| <= max_half_gap * c + s_j * max_half_gap_dynamic()
    (|code| <= 1)."""
    w, bs = case
    w = w.astype(np.float32)
    layer = Linear4bit.from_linear(_linear(w), blocksize=bs, double_quant=True, nested_blocksize=4)
    plain = Linear4bit.from_linear(_linear(w), blocksize=bs, double_quant=False)
    c = np.repeat(to_numpy(plain.absmax.data), bs).reshape(w.shape)
    nb = w.size // bs
    scale_err = np.repeat(to_numpy(absmax_error_bound(layer.nested_absmax.data, nb, 4)), bs).reshape(w.shape)
    slack = FLOAT_SLACK * np.finfo(np.float32).eps * (c + np.abs(to_numpy(layer.offset.data)[0]))
    err = np.abs(w - to_numpy(layer.dequantize()))
    assert np.all(err <= max_half_gap() * c + scale_err + slack)
    np.testing.assert_array_equal(to_numpy(layer.weight.data), to_numpy(plain.weight.data))   # the same codes


def _linear(w: np.ndarray):
    from minipeft.nn import Linear  # noqa: PLC0415

    lin = Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = dev(w)
    return lin


# ---- storage: bits per parameter, exactly -------------------------------------------------------------------------
def test_bits_per_parameter_closed_form():
    assert bits_per_parameter(64) == Fraction(9, 2)                                    # 4 + 32/64 = 4.5
    assert bits_per_parameter(64, double_quant=True) == 4 + Fraction(8, 64) + Fraction(32, 64 * 256)
    assert float(bits_per_parameter(64, double_quant=True)) == 4.126953125
    # QLoRA: the scales cost 0.5 bits per parameter, 0.127 with double quantization: 0.373 saved
    saved = bits_per_parameter(64) - bits_per_parameter(64, double_quant=True)
    assert round(float(saved), 3) == 0.373


@pytest.mark.parametrize("rows, cols", [(128, 128), (512, 128), (64, 32)])
def test_measured_bits_per_parameter_match_the_formula(rows, cols):
    n = rows * cols
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    plain = Linear4bit.from_linear(_linear(w), double_quant=False)
    dq = Linear4bit.from_linear(_linear(w), double_quant=True)
    assert Fraction(8 * plain.storage_bytes(), n) == bits_per_parameter(64)            # exactly 4.5
    nblocks = n // 64
    measured = Fraction(8 * dq.storage_bytes(), n)
    if nblocks % 256 == 0:   # whole nested blocks: the formula plus the one 32-bit mean of this tensor
        assert measured == bits_per_parameter(64, double_quant=True) + Fraction(32, n)
    assert dq.storage_bytes() == weight_bytes(rows, cols, double_quant=True)
    assert plain.storage_bytes() == weight_bytes(rows, cols, double_quant=False)


@pytest.mark.parametrize("double_quant", [False, True])
def test_model_bytes_measured_equal_the_count_from_shapes(double_quant):
    cfg = GPTConfig.from_preset("test", d_model=32, d_ff=128)
    with backend.fork_rng():
        backend.manual_seed(0)
        model = GPT(cfg)
    float_total = model_bytes(model)["total"]
    mats, other = gpt_matrices(cfg)
    assert float_total == bytes_from_shapes(mats, other, quantized=False)
    quantize_model(model, BitsAndBytesConfig(bnb_4bit_use_double_quant=double_quant))
    got = model_bytes(model)
    assert got["total"] == bytes_from_shapes(mats, other, quantized=True, double_quant=double_quant)
    assert got["float"] == 4 * other and got["total"] < float_total


# ---- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w, bs, err, match", [
    (np.zeros((3, 10), np.float32), 64, ValueError, "does not divide"),
    (np.zeros((2, 64), np.float32), 3, ValueError, "even int"),
    (np.zeros((2, 64), np.float32), 0, ValueError, "even int"),
    (np.zeros((2, 64), np.int32), 64, TypeError, "float32 or float64"),
    (np.zeros((2, 64), np.float16), 64, TypeError, "float32 or float64"),
    (np.full((2, 64), np.nan, np.float32), 64, ValueError, "NaN or inf"),
    (np.zeros((0, 64), np.float32), 64, ValueError, "empty"),
])
def test_bad_inputs_raise_clear_errors(w, bs, err, match):
    with pytest.raises(err, match=match):
        quantize_nf4(dev(w), bs)


def test_bad_packed_arrays_and_shapes_raise():
    with pytest.raises(ValueError, match="even length"):
        pack_4bit(dev(np.zeros(3, np.uint8)))
    with pytest.raises(TypeError, match="uint8"):
        unpack_4bit(dev(np.zeros(4, np.int32)))
    packed, absmax = quantize_nf4(dev(np.ones((4, 64), np.float32)))
    with pytest.raises(ValueError, match="do not fit shape"):
        dequantize_nf4(packed, absmax, (4, 32))
    with pytest.raises(ValueError, match="nested scales"):
        dequantize_absmax(dev(np.zeros(5, np.uint8)), dev(np.ones(1, np.float32)), dev(np.zeros(1, np.float32)), 2)
    with pytest.raises(TypeError, match="uint8 indices into the dynamic map"):
        dequantize_absmax(dev(np.zeros(5, np.int8)), dev(np.ones(3, np.float32)), dev(np.zeros(1, np.float32)), 2)
    with pytest.raises(ValueError, match="does not divide"):
        Linear4bit(10, 3)


@pytest.mark.parametrize("kwargs, field", [
    ({"load_in_8bit": True}, "load_in_8bit"), ({"load_in_4bit": False}, "load_in_4bit"),
    ({"bnb_4bit_quant_type": "fp4"}, "bnb_4bit_quant_type"), ({"bnb_4bit_compute_dtype": "float16"},
                                                               "bnb_4bit_compute_dtype"),
    ({"bnb_4bit_use_double_quant": 1}, "bnb_4bit_use_double_quant"), ({"blocksize": 63}, "blocksize"),
    ({"nested_blocksize": 0}, "nested_blocksize"), ({"llm_int8_skip_modules": "lm_head"}, "llm_int8_skip_modules"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"BitsAndBytesConfig.{field}"):
        BitsAndBytesConfig(**kwargs)


def test_config_accepts_numpy_dtypes_and_round_trips():
    cfg = BitsAndBytesConfig(bnb_4bit_compute_dtype=np.float64, bnb_4bit_use_double_quant=True)
    assert cfg.bnb_4bit_compute_dtype == "float64" and cfg.compute_dtype is np.float64
    assert BitsAndBytesConfig.from_dict(cfg.to_dict()) == cfg
