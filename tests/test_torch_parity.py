"""Names that PyTorch / Hugging Face users know mean what they mean there (or say in their docstring how not)."""

from __future__ import annotations

import numpy as np
import pytest

import minipeft
from minipeft import Tensor, backend, no_grad, ops
from minipeft.autograd import is_grad_enabled
from minipeft.nn import Linear, Module
from minipeft.nn.layers import Dropout
from minipeft.peft.config import ConfigError
from minipeft.peft.tuners.bottleneck.config import BottleneckConfig
from minipeft.quant import BitsAndBytesConfig


# ---- backend.fork_rng: the outer stream is exactly where it was (torch.random.fork_rng) ----------------------------
def draws(n: int = 8) -> np.ndarray:
    return backend.to_numpy(backend.rng().standard_normal(n))


@pytest.mark.parametrize("reseed", [False, True], ids=["draws only", "manual_seed inside"])
def test_fork_rng_leaves_the_outer_stream_where_it_was(keep_rng, reseed):
    if backend.is_gpu() and not reseed:
        pytest.skip("CuPy's generator (and the strict stand-in's) holds a lock and cannot be copied: there a draw "
                    "before manual_seed inside the block moves the outer stream (the fallback tested below)")
    minipeft.manual_seed(7)
    draws()                                  # the outer stream is part-way through
    with backend.fork_rng():
        if reseed:
            minipeft.manual_seed(1)
        inside = draws()
    after = draws()
    minipeft.manual_seed(7)
    draws()
    want = draws()                           # the same draws with no block at all
    np.testing.assert_array_equal(after, want)
    if not reseed:                           # the block continued the outer stream, from a copy of it
        np.testing.assert_array_equal(inside, want)


def test_fork_rng_with_a_generator_that_cannot_be_copied_still_seeds_and_restores(keep_rng, monkeypatch):
    """CuPy's generator may refuse deepcopy (a lock, device states): the block then uses the outer generator itself,
    as fork_rng did before it copied; manual_seed inside still gives the block its own stream and the old generator
    comes back."""
    def refuse(obj):
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(backend.copy, "deepcopy", refuse)
    minipeft.manual_seed(7)
    outer = backend.rng()
    with backend.fork_rng():
        assert backend.rng() is outer
        minipeft.manual_seed(1)
        inside = draws()
    assert backend.rng() is outer
    minipeft.manual_seed(1)
    np.testing.assert_array_equal(inside, draws())


def test_fork_rng_keeps_an_unseeded_generator_unseeded(keep_rng):
    backend._state["rng"] = None             # as before the process's first draw
    with backend.fork_rng():
        draws()
    assert backend._state["rng"] is None     # the first draw outside still starts from seed 0
    minipeft.manual_seed(0)
    want = draws()
    backend._state["rng"] = None
    np.testing.assert_array_equal(draws(), want)


# ---- Tensor.numel and no_grad ----------------------------------------------------------------------------------------
def test_numel_counts_elements_as_torch_and_size_stays_numpy_s():
    t = Tensor(np.zeros((3, 4)))
    assert t.numel() == 12 and isinstance(t.numel(), int)
    assert t.size == 12                      # NumPy's meaning: an int, not a method giving the shape
    model = Linear(5, 3)
    assert sum(p.numel() for p in model.parameters()) == 5 * 3 + 3 == model.num_parameters()


def test_no_grad_as_a_block_and_as_a_decorator_with_and_without_parentheses():
    x = Tensor(np.ones(3), requires_grad=True)

    @no_grad
    def bare():
        assert not is_grad_enabled()
        return ops.exp(x)

    @no_grad()
    def called():
        assert not is_grad_enabled()
        return ops.exp(x)

    with no_grad():
        assert not is_grad_enabled()
        y = ops.exp(x)
    assert not y.requires_grad and not bare().requires_grad and not called().requires_grad
    assert bare.__name__ == "bare" and called.__name__ == "called"   # functools.wraps
    assert is_grad_enabled() and ops.exp(x).requires_grad


def test_no_grad_nests_and_restores_after_an_exception():
    @no_grad
    def fails():
        raise KeyError("boom")

    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled()         # the inner block put back the outer setting (off), not True
    assert is_grad_enabled()
    with pytest.raises(KeyError):
        fails()
    assert is_grad_enabled()


# ---- Module.requires_grad_, modules, children, num_parameters(only_trainable=) ----------------------------------
class Pair(Module):
    def __init__(self):
        self.a = Linear(2, 3)
        self.inner = Pair2()


class Pair2(Module):
    def __init__(self):
        self.b = Linear(3, 1)


def test_requires_grad_sets_every_parameter_and_returns_self():
    m = Pair()
    assert m.requires_grad_(False) is m
    assert not any(p.requires_grad for p in m.parameters())
    assert m.requires_grad_() is m and all(p.requires_grad for p in m.parameters())


def test_modules_and_children_as_torch():
    m = Pair()
    assert list(m.modules()) == [m, m.a, m.inner, m.inner.b]                 # pre-order, self first
    assert list(m.modules()) == [mod for _, mod in m.named_modules()]
    assert list(m.children()) == [m.a, m.inner]                              # direct submodules only


def test_num_parameters_takes_transformers_only_trainable():
    m = Pair()
    m.a.requires_grad_(False)
    total, trainable = 2 * 3 + 3 + 3 * 1 + 1, 3 * 1 + 1
    assert m.num_parameters() == m.num_parameters(only_trainable=False) == total
    assert m.num_parameters(only_trainable=True) == m.num_parameters(trainable_only=True) == trainable


# ---- layers: how the defaults differ from torch is stated --------------------------------------------------------
def test_layer_docstrings_state_their_torch_differences():
    assert Dropout().p == 0.0 and "0.5" in Dropout.__doc__
    with backend.fork_rng():
        assert not Linear(4, 2).bias.numpy().any()
    assert "bias starts at zero" in Linear.__doc__


# ---- BitsAndBytesConfig: transformers' fields and defaults --------------------------------------------------------
def test_bnb_docstring_names_the_defaults_that_differ_from_transformers():
    cfg = BitsAndBytesConfig()
    assert cfg.load_in_4bit is True and cfg.bnb_4bit_quant_type == "nf4"      # kept: the only values that work
    doc = " ".join(BitsAndBytesConfig.__doc__.split())
    assert "load_in_4bit defaults to True" in doc and '(transformers: False and "fp4")' in doc


TRANSFORMERS_DEFAULTS = {"bnb_4bit_quant_storage": "uint8", "llm_int8_threshold": 6.0,
                         "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}


@pytest.mark.parametrize("name, value", TRANSFORMERS_DEFAULTS.items())
def test_bnb_accepts_transformers_fields_at_their_default(name, value):
    assert getattr(BitsAndBytesConfig(**{name: value}), name) == value


@pytest.mark.parametrize("name, value", [("bnb_4bit_quant_storage", "float16"), ("llm_int8_threshold", 5.0),
                                         ("llm_int8_has_fp16_weight", True),
                                         ("llm_int8_enable_fp32_cpu_offload", True)])
def test_bnb_refuses_other_values_by_name(name, value):
    with pytest.raises(ConfigError, match=f"BitsAndBytesConfig.{name} = .*not implement"):
        BitsAndBytesConfig(**{name: value})


def test_bnb_quant_storage_takes_the_numpy_dtype():
    assert BitsAndBytesConfig(bnb_4bit_quant_storage=np.uint8).bnb_4bit_quant_storage == "uint8"


def transformers_dict(**overrides) -> dict:
    """What transformers' BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4").to_dict() writes."""
    return {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
            "quant_method": "bitsandbytes", **overrides}


def test_bnb_from_dict_reads_transformers_dict():
    cfg = BitsAndBytesConfig.from_dict(transformers_dict())
    assert cfg == BitsAndBytesConfig(bnb_4bit_use_double_quant=True)
    assert BitsAndBytesConfig.from_dict(cfg.to_dict()) == cfg


def test_bnb_from_dict_refuses_private_keys_that_disagree():
    with pytest.raises(ConfigError, match="_load_in_8bit=True disagrees with load_in_8bit=False"):
        BitsAndBytesConfig.from_dict(transformers_dict(_load_in_8bit=True))
    with pytest.raises(ConfigError, match="BitsAndBytesConfig.load_in_8bit"):   # alone, it stands for the public one
        BitsAndBytesConfig.from_dict({"_load_in_8bit": True})


# ---- bottleneck adapters: an LLM-Adapters config of the same name is refused, not loaded --------------------------
def test_llm_adapters_bottleneck_config_is_refused_by_field_name():
    llm_adapters = {"peft_type": "BOTTLENECK", "task_type": "CAUSAL_LM", "base_model_name_or_path": "x",
                    "inference_mode": False, "bottleneck_size": 256, "non_linearity": "tanh", "adapter_dropout": 0.0,
                    "target_modules": ["down_proj"], "use_parallel_adapter": False, "use_adapterp": False,
                    "scaling": 1.0, "bias": "none", "init_weights": "bert", "modules_to_save": None}
    with pytest.raises(ConfigError, match="'adapter_dropout'"):
        BottleneckConfig.from_dict(llm_adapters)
    doc = BottleneckConfig.__doc__ + (BottleneckConfig.houlsby.__doc__ or "")
    assert "gelu_new" in doc and "swish" in doc


def test_one_no_grad_instance_entered_twice_restores_each_level():
    ng = no_grad()
    with ng:
        with ng:
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()
