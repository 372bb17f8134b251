"""AdamW's fast path (chunked, threaded) gives the reference's numbers bit for bit, in float32, over several steps.

tests/test_fast_ops.py checks the update itself on small float64 arrays; here the whole optimizer runs on a GPT's
parameters, large enough that each weight is cut into many chunks shared among threads, so any chunk boundary,
ragged last chunk or thread hand-off that touched an element twice (or skipped one) would show as a difference.
"""

from __future__ import annotations

import numpy as np
import pytest

import minipeft as mp
from minipeft import backend
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW, adamw_update
from minipeft.workshop.fast import _shared
from minipeft.workshop.fast.adamw import chunked_adamw_update


def trained_state(fast: bool, steps: int = 3):
    """Parameters and Adam moments of a GPT after `steps` AdamW steps with fixed pseudo-random gradients."""
    mp.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, context_length=16, d_model=64, n_layer=1, n_head=2, d_ff=256,
                          tie_embeddings=False))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    rng = np.random.default_rng(1)
    with mp.fast_ops(fast):
        for _ in range(steps):
            for p in model.parameters():
                p.grad = backend.asarray(rng.standard_normal(p.shape).astype(np.float32))
            opt.step()
    params = [backend.to_numpy(p.data) for p in model.parameters()]
    moments = [backend.to_numpy(opt.state[p][k]) for p in model.parameters() for k in ("m", "v")]
    return params, moments


@pytest.mark.parametrize("chunk", [1000, 4096])   # a 300 x 64 table is 19,200 elements: 20 or 5 chunks, ragged
def test_fast_adamw_is_bit_identical_to_reference(keep_rng, monkeypatch, chunk):
    monkeypatch.setattr(_shared, "CHUNK_ELEMENTS", chunk)
    ref_p, ref_m = trained_state(fast=False)
    fast_p, fast_m = trained_state(fast=True)
    for a, b in zip(ref_p + ref_m, fast_p + fast_m, strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(b, a)             # same float ops per element: no tolerance needed
    assert any(float(np.abs(p).max()) > 0 for p in ref_m)  # the steps did move the moments


def test_fast_adamw_with_one_thread_equals_with_two(keep_rng, monkeypatch):
    monkeypatch.setattr(_shared, "CHUNK_ELEMENTS", 1000)
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "1")
    assert _shared.workers() is None
    one_p, _ = trained_state(fast=True)
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "2")
    two_p, _ = trained_state(fast=True)
    for a, b in zip(one_p, two_p, strict=True):
        np.testing.assert_array_equal(b, a)


def test_fast_adamw_updates_a_non_contiguous_parameter_in_place():
    """A transposed view has no flat view: the fast path falls back to whole-array passes, still in place."""
    rng = np.random.default_rng(0)
    host = rng.standard_normal((40, 30)).astype(np.float32)
    g = backend.asarray(rng.standard_normal((30, 40)).astype(np.float32))

    def fresh():
        return [backend.asarray(np.zeros((30, 40), np.float32)) for _ in range(3)]   # m, v, tmp

    want = backend.asarray(host.T.copy())
    adamw_update(want, g, *fresh(), 1, 0.1, 0.9, 0.999, 1e-8, 0.01)
    got = backend.asarray(host.copy())
    chunked_adamw_update(got.T, g, *fresh(), 1, 0.1, 0.9, 0.999, 1e-8, 0.01, chunk_elements=7)
    np.testing.assert_array_equal(backend.to_numpy(got).T, backend.to_numpy(want))
    assert not np.array_equal(backend.to_numpy(want), host.T)                        # it did move


def test_num_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "3")
    assert _shared.num_threads() == 3
    monkeypatch.delenv("MINIPEFT_NUM_THREADS")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert _shared.num_threads() == 1       # the default, whatever OpenBLAS uses (measured: see num_threads)
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "zero")
    assert _shared.num_threads() == 1       # not a positive integer: the default


def test_worker_pool_follows_the_thread_count(monkeypatch):
    """A pool is made for num_threads() - 1 workers and remade when MINIPEFT_NUM_THREADS changes."""
    if backend.is_gpu():
        pytest.skip("the worker pool is a CPU thing: on a GPU (or the strict stand-in) workers() is None")
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "2")
    two = _shared.workers()
    assert two is not None and two._max_workers == 1
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "3")
    three = _shared.workers()
    assert three is not two and three._max_workers == 2 and _shared.workers() is three
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "1")
    assert _shared.workers() is None


def test_worker_pool_is_remade_after_a_fork(monkeypatch):
    """A pool made before os.fork() has no threads in the child; work submitted to it would wait forever."""
    if backend.is_gpu():
        pytest.skip("the worker pool is a CPU thing: on a GPU (or the strict stand-in) workers() is None")
    monkeypatch.setenv("MINIPEFT_NUM_THREADS", "2")
    pool = _shared.workers()
    assert pool is not None and _shared.workers() is pool
    monkeypatch.setattr(_shared.os, "getpid", lambda: -1)   # as seen from a forked child
    child_pool = _shared.workers()
    assert child_pool is not pool and child_pool.submit(lambda: 7).result(timeout=10) == 7
