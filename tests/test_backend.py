"""The backend: one place picks NumPy or CuPy, the seed, and the default dtype."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import minipeft
from minipeft import Tensor, backend, ops


@pytest.fixture
def restore_device():
    """Put back the device the test process started on (cpu, or cuda under MINIPEFT_DEVICE=cuda)."""
    prev = minipeft.get_device()
    with backend.fork_rng():  # set_device drops the generator; keep the other tests' stream
        try:
            yield
        finally:
            minipeft.set_device(prev)


def test_default_device_follows_the_environment():
    want = os.environ.get("MINIPEFT_DEVICE", "cpu").lower() or "cpu"
    if os.environ.get("MINIPEFT_TEST_DEVICE", "").strip().lower() == "strict":
        want = "strict"                                           # tests/conftest.py selected the stand-in
    assert minipeft.get_device() == want
    assert (minipeft.xp() is np) == (want == "cpu")
    assert isinstance(Tensor([1.0]).data, minipeft.xp().ndarray)


def test_manual_seed_makes_draws_bit_identical(keep_rng):
    minipeft.manual_seed(123)
    a = minipeft.to_numpy(backend.rng().standard_normal(16))
    minipeft.manual_seed(123)
    b = minipeft.to_numpy(backend.rng().standard_normal(16))
    minipeft.manual_seed(124)
    c = minipeft.to_numpy(backend.rng().standard_normal(16))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_manual_seed_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        minipeft.manual_seed(seed)


def test_set_device_bad_name_raises():
    with pytest.raises(ValueError, match="device must be one of"):
        minipeft.set_device("tpu")


def _import_with_device(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINIPEFT_DEVICE": value}
    code = "import sys, minipeft; print(minipeft.get_device(), 'strict_cupy' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_bad_minipeft_device_fails_at_import_naming_the_variable_its_value_and_the_choices():
    r = _import_with_device("bogus")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: MINIPEFT_DEVICE='bogus' is not a device"), last
    assert "allowed values: 'cpu'" in last and "'cuda'" in last and "Unset it" in last
    assert "strict" not in last                                  # the test-only stand-in is not advertised
    r = _import_with_device(" CPU ")
    assert r.returncode == 0 and r.stdout.split() == ["cpu", "False"], r.stderr   # the stand-in is not even loaded


def test_cuda_without_cupy_raises_device_error(restore_device, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(backend.DeviceError, match="not installed") as e:
        minipeft.set_device("cuda")
    assert "set_device('cpu')" in str(e.value)


def test_cuda_without_gpu_raises_device_error(restore_device, monkeypatch):
    def no_gpu():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_gpu))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(backend.DeviceError, match="no CUDA GPU answered.*cudaErrorNoDevice") as e:
        minipeft.set_device("cuda")
    assert "set_device('cpu')" in str(e.value)


def test_failed_set_device_leaves_the_device_unchanged(restore_device, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    minipeft.set_device("cpu")
    with pytest.raises(backend.DeviceError):
        minipeft.set_device("cuda")
    assert minipeft.get_device() == "cpu" and minipeft.xp() is np


def test_default_dtype_is_float32():
    assert minipeft.get_default_dtype() is np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.array([1.0])).dtype == np.float64  # an array keeps its own dtype, as in torch
    assert Tensor([1, 2]).dtype.kind == "i"


def test_float64_fixture_switches_the_default(float64):
    assert minipeft.get_default_dtype() is np.float64
    assert Tensor([1.0]).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, bool])
def test_set_default_dtype_rejects_non_float32_64(dtype):
    with pytest.raises(ValueError, match="default dtype must be float32 or float64"):
        minipeft.set_default_dtype(dtype)
    assert minipeft.get_default_dtype() is np.float32


def test_to_numpy_on_tensors_arrays_and_lists():
    a = np.arange(6.0).reshape(2, 3)
    for x in (Tensor(a), minipeft.xp().asarray(a), a, a.tolist()):
        out = minipeft.to_numpy(x)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(Tensor(a).numpy(), a)


@pytest.mark.gpu
def test_gpu_ops_match_numpy():
    import cupy  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((4, 8, 16), (32, 16), (32,)))
    y = ops.gelu(ops.linear(Tensor(x), Tensor(W), Tensor(b)))
    assert isinstance(y.data, cupy.ndarray)
    h = x @ W.T + b
    want = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-5)  # float32, sums of 16 terms
    name = backend.device_name()
    assert name.startswith("GPU ") and len(name) > len("GPU "), name


@pytest.mark.skipif(backend.is_gpu(), reason="names the CPU; under MINIPEFT_DEVICE=cuda it names the GPU")
def test_device_name_names_the_cpu_model_and_cores(monkeypatch):
    import builtins
    import platform

    name = backend.device_name()
    assert name.startswith("CPU ") and name.endswith(f", {os.cpu_count()} cores"), name
    if os.path.exists("/proc/cpuinfo"):  # Linux: the model name line, as lscpu shows it
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        if model:
            assert model in name
    real_open = builtins.open

    def no_cpuinfo(path, *a, **k):
        if str(path) == "/proc/cpuinfo":
            raise OSError("no /proc here")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert backend.device_name() == f"CPU {platform.machine() or 'unknown CPU'}, {os.cpu_count()} cores"


def test_synchronize_waits_on_the_device_and_is_a_no_op_on_the_cpu(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Device=lambda device=None: types.SimpleNamespace(synchronize=lambda: calls.append("sync"))))
    monkeypatch.setitem(backend._state, "device", "cuda")
    monkeypatch.setitem(backend._state, "xp", fake)
    backend.synchronize()
    assert calls == ["sync"]                 # on a GPU: the device's queue is drained
    monkeypatch.setitem(backend._state, "device", "cpu")
    monkeypatch.setitem(backend._state, "xp", np)
    backend.synchronize()
    assert calls == ["sync"]                 # on the CPU there is nothing to wait for
