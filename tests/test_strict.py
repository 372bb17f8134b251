"""The strict backend (MINIPEFT_TEST_DEVICE=strict): CuPy's rules on NumPy arrays, and what a training step reads back.

Each test switches to the stand-in itself, so this file checks it whatever device the test process runs on; CI
also runs the model, LoRA, op and tutorial tests with MINIPEFT_TEST_DEVICE=strict (.ci/run).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

import minipeft
from minipeft import Tensor, backend
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.train import train

IMPLICIT = "Implicit conversion to a NumPy array is not allowed"


@pytest.fixture
def xp():
    """The strict stand-in as the active backend inside the test; the process's device afterwards."""
    prev = minipeft.get_device()
    with backend.fork_rng():
        minipeft.set_device("strict")
        try:
            yield backend.xp()
        finally:
            minipeft.set_device(prev)


def counting():
    import strict_cupy  # noqa: PLC0415 (imported only with the strict device)

    return strict_cupy.counting()


def test_strict_takes_the_gpu_path_with_its_own_array_module(xp):
    assert backend.get_device() == "strict" and backend.is_gpu() and xp is not np
    assert isinstance(Tensor([1.0, 2.0]).data, xp.ndarray) and not isinstance(Tensor([1.0]).data, np.ndarray)
    assert backend.device_name().startswith("GPU ") and "stand-in" in backend.device_name()


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: np.float64(a), lambda a: np.zeros(2) + [a[0]]],
                         ids=["asarray", "array", "float64", "in a list"])
def test_implicit_conversion_to_numpy_raises_as_in_cupy(xp, convert):
    a = xp.arange(2.0)
    with pytest.raises(TypeError, match=IMPLICIT):
        convert(a)
    np.testing.assert_array_equal(backend.to_numpy(a), [0.0, 1.0])   # the one way to the host
    np.testing.assert_array_equal(a.get(), [0.0, 1.0])


@pytest.mark.parametrize("call", [np.exp, np.mean, lambda a: np.concatenate([a, a]), lambda a: np.add(a, 1.0),
                                  lambda a: np.where(a > 0, a, 0)], ids=["exp", "mean", "concatenate", "add", "where"])
def test_numpy_functions_refuse_device_arrays(xp, call):
    with pytest.raises(TypeError):
        call(xp.ones(3))


@pytest.mark.parametrize("mix", [lambda d, h: d + h, lambda d, h: h * d, lambda d, h: d @ h,
                                 lambda d, h: xp_call(d, "add", d, h), lambda d, h: xp_call(d, "concatenate", [d, h])],
                         ids=["dev + host", "host * dev", "dev @ host", "xp.add", "xp.concatenate"])
def test_a_host_array_where_a_device_array_belongs_raises(xp, mix):
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        mix(xp.ones(3), np.ones(3))


def xp_call(_, name, *args):
    return getattr(backend.xp(), name)(*args)


def test_in_place_writes_between_host_and_device_raise(xp):
    d, h = xp.zeros(3), np.zeros(3)
    with pytest.raises(TypeError, match=IMPLICIT):
        h[:] = d
    with pytest.raises(TypeError):
        h += d
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        d[:] = h
    d[:] = 1.0                                        # scalars are fine, as in CuPy
    d[xp.asarray([0, 2])] = xp.asarray([5.0, 6.0])
    np.testing.assert_array_equal(backend.to_numpy(d), [5.0, 1.0, 6.0])


def test_scalars_and_tensors_combine_with_device_arrays(xp):
    d = xp.arange(3.0)
    for r in (2.0 * d, np.float32(2) * d, d * np.float64(2), -d + 1, abs(d)):
        assert isinstance(r, xp.ndarray)
    t = d * Tensor(xp.ones(3))                        # a Tensor's higher __array_priority__ wins, as with CuPy
    assert isinstance(t, Tensor)


def test_reductions_and_integer_indexing_give_0d_device_arrays(xp):
    d = xp.arange(6.0).reshape(2, 3)
    for r in (d.sum(), d.max(), xp.vdot(d.ravel(), d.ravel()), d[1, 2], d.argmax()):
        assert isinstance(r, xp.ndarray) and r.ndim == 0


def test_every_read_back_and_transfer_is_counted_at_its_caller(xp):
    d = xp.arange(4.0)
    with counting() as c:
        float(d[0]), int(d[1]), bool(d[2]), d[3].item(), f"{d.sum():.1f}"   # 5 scalar reads
        d[d > 1.0], xp.flatnonzero(d)                 # data-dependent sizes: CuPy syncs to learn them (2)
        d.get(), d.tolist(), backend.to_numpy(d)      # 3 arrays to the host
        xp.asarray(np.ones(2)), d[[0, 1]], Tensor([1.0])   # 3 uploads (an index list is one)
    assert (c.scalar_reads, c.to_host, c.to_device) == (7, 3, 3)
    *here, tensor = c.sites                           # each names its caller: this test, and Tensor() for the last
    assert all(re.search(r"tests/test_strict\.py:\d+ \(test_every_read", s) for s in here), here
    assert re.fullmatch(r"to_device at minipeft/autograd\.py:\d+ \(__init__\)", tensor), tensor
    with counting() as c:
        (d * 2 + 1).sum(), d.reshape(2, 2).T, xp.asarray(d), d[1:], xp.maximum(d, 0)
    assert (c.scalar_reads, c.to_host, c.to_device) == (0, 0, 0)


def test_the_generator_draws_device_arrays_with_cupys_signatures(xp):
    minipeft.manual_seed(3)
    g = backend.rng()
    draws = [g.standard_normal((2, 3), dtype=np.float32), g.random(4, dtype=np.float32), g.random(),
             g.uniform(-1, 1, size=5, dtype=np.float32), g.integers(0, 10, size=3)]
    assert all(isinstance(a, xp.ndarray) for a in draws)
    assert [a.dtype for a in draws] == [np.float32, np.float32, np.float64, np.float32, np.int64]
    minipeft.manual_seed(3)   # NumPy's generator underneath: the CPU's draws for the same seed
    np.testing.assert_array_equal(backend.to_numpy(backend.rng().standard_normal((2, 3), dtype=np.float32)),
                                  np.random.default_rng(3).standard_normal((2, 3), dtype=np.float32))


def test_the_memory_pool_counts_live_device_bytes(xp):
    pool = xp.get_default_memory_pool()
    pool.free_all_blocks()
    used = pool.used_bytes()
    a = xp.zeros(1000, dtype=np.float64)
    view = a[10:]                                     # a view allocates nothing
    assert pool.used_bytes() - used == 8000 and pool.total_bytes() >= used + 8000
    del a, view
    assert pool.used_bytes() == used and pool.total_bytes() >= used + 8000   # the high-water mark stays


# ---- the training step's budget -----------------------------------------------------------------
# What one step of train() reads back from the device (each a sync on a GPU), by caller, and why. Nothing in it
# depends on the depth of the model or on its parameter count: a read in a per-layer or per-parameter loop fails.
STEP_READS = {
    "minipeft/autograd.py (item)": 1,                      # the loss: progress bar and NaN guard
    "minipeft/optim.py (clip_grad_norm_)": 1,              # the global gradient norm: clipping and NaN guard
    "minipeft/loss.py (causal_lm_loss)": 1,                # how many targets: the LM head runs on those rows only
    "minipeft/ops/nn.py (forward)": 2,                     # token ids and position ids in range (the embeddings)
    "minipeft/ops/loss.py (check_targets)": 1,             # targets in range
}


def _step_reads(model, x, y) -> tuple[Counter, int, int]:
    """Per-step reads by caller, and the transfers, from the difference of a 3-step and a 1-step run."""
    runs = []
    for steps in (1, 3):
        opt = AdamW(model.parameters(trainable_only=True), lr=1e-3)
        with counting() as c:
            train(model, lambda s: (x, y), steps=steps, optimizer=opt, progress=False, log_every=0)
        runs.append((Counter(re.sub(r":\d+ ", " ", s.split(" at ", 1)[1]) for s in c.sites
                             if s.startswith("scalar_read")), c.to_host, c.to_device))
    (one, h1, d1), (three, h3, d3) = runs
    return Counter({k: (three[k] - one[k]) / 2 for k in three | one}), (h3 - h1) / 2, (d3 - d1) / 2


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_a_training_step_moves_nothing_to_the_host_and_reads_a_fixed_few_scalars(xp, lora, n_layer):
    with backend.fork_rng():
        minipeft.manual_seed(0)
        model = GPT(GPTConfig.from_preset("test", n_layer=n_layer, dropout=0.1))
        if lora:
            model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (2, 8)), rng.integers(0, 64, (2, 8))
    y[:, :3] = -100                                        # a prompt: the head runs on the target rows only
    reads, to_host, to_device = _step_reads(model, xp.asarray(x), xp.asarray(y))
    assert to_host == 0 and to_device == 0
    assert {k: v for k, v in reads.items() if v} == STEP_READS
    _, to_host, to_device = _step_reads(model, x, y)       # host batches: the upload of x and y, nothing else
    assert to_host == 0 and to_device == 2
