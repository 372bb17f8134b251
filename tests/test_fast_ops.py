"""Every fast path equals its reference: the same output and the same gradient for every input, in float64.

The pairs come from `fastpath.fast_paths()`, so a fast path registered anywhere (workshop/fast/, a PEFT method's
op) is covered here, and `CASES` must hold a case for it: a fast path added without one fails
`test_every_fast_path_has_a_case`, naming it.

Tolerance: both sides compute the same sums in a different order (pre-scaled queries, matrix-vector row sums,
an unshifted softmax, a folded weight), so they differ by float64 rounding: a few ulps of the largest term,
times the number of terms (<= ~50 here). rtol = 1e-12 with atol = 1e-12 * max(1, max|reference|) leaves
two orders of margin over that, while any wrong formula is off by O(1).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import arrays, attention_shapes, shapes, token_ids

from minipeft import Function, Tensor, backend, manual_seed, to_numpy
from minipeft.ops import fastpath
from minipeft.quant import QuantState, quantize_absmax, quantize_nf4
from minipeft.workshop.fast import _shared

RTOL = 1e-12


def assert_close(got, want, what: str) -> None:
    got, want = to_numpy(got), to_numpy(want)
    atol = RTOL * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


# ---- the cases: one per reference, keyed by its __name__ -------------------------------------------------
# A case draws (args, options, fast_options): the op's positional inputs (float arrays are differentiated,
# integer arrays and None are passed as they are), the keyword options both paths take, and options only the
# fast path takes (e.g. attention's block size, so the blocks themselves are exercised at these small shapes).

def attention_case(data):
    B, T, H, hs = data.draw(attention_shapes(max_T=6))
    C = H * hs
    mode = data.draw(st.sampled_from(["causal", "kv_cache", "non_causal"]))
    Tq = data.draw(st.integers(1, T)) if mode == "kv_cache" else T
    Tk = data.draw(st.integers(1, 4)) if mode == "non_causal" else T
    q_scale = data.draw(st.sampled_from([1.0, 30.0]))  # 30: scores beyond SHIFT_FREE_BOUND, so the shifted branch
    q, k, v = data.draw(arrays((B, Tq, C))) * q_scale, data.draw(arrays((B, Tk, C))), data.draw(arrays((B, Tk, C)))
    block_size = data.draw(st.integers(1, T + 1))
    return [q, k, v], {"n_head": H, "causal": mode != "non_causal"}, {"block_size": block_size}


def gelu_case(data):
    return [data.draw(arrays(data.draw(shapes()))) * 3], {}, {}


def cross_entropy_case(data):
    lead = data.draw(shapes(max_dims=2, max_side=4))
    V = data.draw(st.integers(1, 6))
    offset = data.draw(st.sampled_from([0.0, 60.0, -60.0]))  # +-60: past SHIFT_FREE_BOUND, the shifted branch
    z = data.draw(arrays((*lead, V))) + offset
    t = data.draw(token_ids(V, lead))
    t = np.where(data.draw(arrays(lead)) > 1.0, -100, t)  # about a quarter of the positions ignored
    return [z, t], {}, {}


def linear_cross_entropy_case(data):
    N, C, V = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    scale = np.where(data.draw(arrays((N, 1))) > 0.0, 30.0, 1.0)   # x30: logits past SHIFT_FREE_BOUND, so chunks
    h, W = data.draw(arrays((N, C))) * scale, data.draw(arrays((V, C)))   # of one step differ in the shifted branch
    b = data.draw(st.one_of(st.none(), arrays((V,))))
    t = np.where(data.draw(arrays((N,))) > 1.0, -100, data.draw(token_ids(V, (N,))))   # about a quarter ignored
    return [h, W, b, t], {"chunk_rows": data.draw(st.integers(1, N + 1))}, {}


def layer_norm_case(data):
    x = data.draw(arrays(data.draw(shapes(max_dims=3, max_size=32))))
    C = x.shape[-1]
    w = data.draw(st.one_of(st.none(), arrays((C,))))
    b = data.draw(st.one_of(st.none(), arrays((C,))))
    return [x, w, b], {"eps": 1e-5}, {}


def scatter_add_case(data):
    rows, cols = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 3))
    unique = data.draw(st.booleans())  # a strictly increasing index takes the fast path's `+=`
    if unique:
        index = np.array(sorted(data.draw(st.sets(st.integers(0, rows - 1)))), dtype=np.int64)
    else:
        index = np.array(data.draw(st.lists(st.integers(-rows, rows - 1), max_size=8)), dtype=np.int64)
    return [data.draw(arrays((rows, cols))), index, data.draw(arrays((len(index), cols)))], {}, {}


def lora_linear_case(data):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    k, d, r = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    x, W0, A, B = (data.draw(arrays(s)) for s in ((*lead, k), (d, k), (r, k), (d, r)))
    b = data.draw(st.one_of(st.none(), arrays((d,))))
    options = {"scale": data.draw(st.sampled_from([0.5, 2.0])), "dropout_p": data.draw(st.sampled_from([0.0, 0.3]))}
    return [x, W0, b, A, B], options, {}


def qlora_linear_case(data):
    # LoRA's case on a 4-bit weight: W0 quantized (NF4, blocks of 2, double quantization in blocks of 2), passed
    # as the `qweight` option (never differentiated); k even so blocks of 2 divide d * k
    lead = data.draw(shapes(max_dims=2, max_side=3))
    k, d, r = data.draw(st.sampled_from([2, 4])), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    x, W0, A, B = (data.draw(arrays(s)) for s in ((*lead, k), (d, k), (r, k), (d, r)))
    b = data.draw(st.one_of(st.none(), arrays((d,))))
    packed, absmax = quantize_nf4(backend.asarray(W0), 2)
    qweight = QuantState(packed, *quantize_absmax(absmax, 2), (d, k), 2, 2)
    options = {"qweight": qweight, "scale": data.draw(st.sampled_from([0.5, 2.0])),
               "dropout_p": data.draw(st.sampled_from([0.0, 0.3]))}
    return [x, b, A, B], options, {}


def dequantize_nf4_case(data):
    # out (overwritten: its values are irrelevant), the packed codes of a random weight, and its block scales
    blocksize = data.draw(st.sampled_from([2, 4, 8]))
    n = blocksize * data.draw(st.integers(1, 6))
    packed, absmax = quantize_nf4(backend.asarray(data.draw(arrays((n,)))), blocksize)
    return [data.draw(arrays((n,))), backend.to_numpy(packed), backend.to_numpy(absmax)], {"blocksize": blocksize}, {}


def adamw_update_case(data):
    # p, g, m, v (>= 0: a running mean of squares), tmp (overwritten); the step number and hyperparameters as
    # options; a chunk size that cuts even these small arrays into several chunks, ragged last one included
    shape = data.draw(shapes())
    p, g, m, tmp = (data.draw(arrays(shape)) for _ in range(4))
    v = data.draw(arrays(shape)) ** 2
    options = {"t": data.draw(st.integers(1, 50)), "lr": data.draw(st.sampled_from([1e-3, 0.1])), "b1": 0.9,
               "b2": 0.999, "eps": 1e-8, "wd": data.draw(st.sampled_from([0.0, 0.01]))}
    return [p, g, m, v, tmp], options, {"chunk_elements": data.draw(st.integers(1, 5))}


CASES = {
    "adamw_update": adamw_update_case,
    "AttentionFn": attention_case,
    "GELUFn": gelu_case,
    "CrossEntropyFn": cross_entropy_case,
    "LayerNormFn": layer_norm_case,
    "LinearCrossEntropyFn": linear_cross_entropy_case,
    "scatter_add": scatter_add_case,
    # PEFT methods' fast paths: their ops live in minipeft/peft/, their cases here.
    "LoraLinearFn": lora_linear_case,
    "QLoraLinearFn": qlora_linear_case,
    "dequantize_nf4_into": dequantize_nf4_case,
}


def registered() -> dict:
    return {getattr(ref, "__name__", repr(ref)): (ref, fast) for ref, fast in fastpath.fast_paths().items()}


def test_every_fast_path_has_a_case():
    missing = sorted(set(registered()) - set(CASES))
    assert not missing, f"fast paths without a case in tests/test_fast_ops.py CASES: {missing}; add one"


def test_every_case_has_a_fast_path():
    stale = sorted(set(CASES) - set(registered()))
    assert not stale, f"CASES in tests/test_fast_ops.py name no registered fast path: {stale}; remove them"


# ---- running a pair ------------------------------------------------------------------------------
def run_function(fn, args, options, needs, dout):
    """fn.apply on fresh tensors (those in `needs` require grad), backward with dout; (out, grads)."""
    ts = [None if a is None else Tensor(np.array(a), requires_grad=i in needs) for i, a in enumerate(args)]
    with backend.fork_rng():
        manual_seed(0)  # the same dropout mask (if any) on both paths
        out = fn.apply(*ts, **options)
    out.backward(dout)
    return out.data, [ts[i].grad for i in sorted(needs)]


@contextlib.contextmanager
def threading(mode: str):
    """"whole": the fast paths as configured; "two_threads": chunks of 3 elements and MINIPEFT_NUM_THREADS=2, so
    even these small arrays are cut into many chunks (ragged ones included), shared between two threads where a
    fast path uses the worker pool."""
    if mode == "whole":
        yield
        return
    saved_env, saved_chunk = os.environ.get("MINIPEFT_NUM_THREADS"), _shared.CHUNK_ELEMENTS
    os.environ["MINIPEFT_NUM_THREADS"], _shared.CHUNK_ELEMENTS = "2", 3
    try:
        yield
    finally:
        _shared.CHUNK_ELEMENTS = saved_chunk
        if saved_env is None:
            del os.environ["MINIPEFT_NUM_THREADS"]
        else:
            os.environ["MINIPEFT_NUM_THREADS"] = saved_env


@pytest.mark.parametrize("mode", ["whole", "two_threads"])
@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_fast_path_equals_reference(name, mode, data):
    """Forward and every input's gradient (for a random subset of inputs requiring grad) agree, also with the
    work cut into many chunks on two threads."""
    with threading(mode):
        check_pair(name, data)


def check_pair(name, data):
    assert name in registered(), f"{name} has a case but no registered fast path"
    ref, fast = registered()[name]
    args, options, fast_options = CASES[name](data)
    if not (isinstance(ref, type) and issubclass(ref, Function)):  # a plain function: it updates its arrays
        # each path gets its own copies (on the device the op runs on), since either may update any of them in
        # place (args[0] always; AdamW's moments too); every array must end the same
        want = [backend.asarray(np.array(a)) for a in args]
        got = [backend.asarray(np.array(a)) for a in args]
        ref(*want, **options)
        fast(*got, **options, **fast_options)
        for i, (g_, w_) in enumerate(zip(got, want, strict=True)):
            assert_close(g_, w_, f"{name}: result" if i == 0 else f"{name}: argument {i} after the call")
        return
    floats = [i for i, a in enumerate(args) if a is not None and a.dtype.kind == "f"]
    needs = data.draw(st.sets(st.sampled_from(floats), min_size=1), label="inputs requiring grad")
    with backend.fork_rng():
        manual_seed(0)
        shape = ref.apply(*(None if a is None else Tensor(a) for a in args), **options).shape
    dout = data.draw(arrays(shape), label="dout")
    out_ref, grads_ref = run_function(ref, args, options, needs, dout)
    out_fast, grads_fast = run_function(fast, args, {**options, **fast_options}, needs, dout)
    assert_close(out_fast, out_ref, f"{name}: forward")
    for i, g_fast, g_ref in zip(sorted(needs), grads_fast, grads_ref, strict=True):
        assert g_fast is not None and g_ref is not None, f"{name}: input {i} got no gradient"
        assert_close(g_fast, g_ref, f"{name}: gradient of input {i}")
