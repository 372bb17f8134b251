"""Fuzz: wrong configs and inputs fail with the library's own errors, whose message names what was wrong.

Hypothesis sets one field of a config (every registered PEFT method's, GPTConfig, the optimizers') to an
arbitrary JSON-like value, or feeds the model and the loss arrays of any shape, dtype and values. Either
it works, or it raises one of the library's clear exception types (ValueError and its subclasses
ConfigError/AdapterError/CheckpointError, TypeError, KeyError, IndexError) with a message that names the
field or the input, never a bare error from deep inside NumPy (ZeroDivisionError, AttributeError,
"'<' not supported between ...").

The `ci` profile runs 25 examples per test (a few seconds in all); MINIPEFT_FUZZ_EXAMPLES=2000 runs more.
"""

from __future__ import annotations

import dataclasses
import json
import os

import example_method  # noqa: F401 (registers EXAMPLE_PARALLEL: its config is fuzzed too)
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_helpers import build_gpt, seeded

from minipeft import no_grad
from minipeft.loss import causal_lm_loss
from minipeft.nn import GPTConfig
from minipeft.optim import SGD, AdamW
from minipeft.peft import PEFT_TYPE_TO_CONFIG, AdapterError, LoraConfig, PeftModel, get_peft_model

EXAMPLES = int(os.environ.get("MINIPEFT_FUZZ_EXAMPLES", "0"))
more = settings(max_examples=EXAMPLES, derandomize=False) if EXAMPLES else (lambda test: test)
CLEAR = (ValueError, TypeError, KeyError, IndexError)
INPUT_NAMES = ("token id", "target", "input_ids", "GPT:")
# fields a config cannot be made without (as in Hugging Face PEFT, a soft prompt needs its length): set to a
# valid value whenever another field is the one under test
REQUIRED = {"num_virtual_tokens": 2}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.integers(-2**63, 2**63),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "4", "q_proj", "all-linear",
                                                                                       "(", "none", "gaussian"]))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.sampled_from(["q_proj", "x", "("]), inner,
                                                                     max_size=2)), max_leaves=5)


def assert_clear(error: BaseException, *names: str) -> None:
    """`error` is one of the library's clear types and its message contains one of `names`."""
    assert isinstance(error, CLEAR), f"{type(error).__name__}: {error}"
    names = tuple(n for n in names if n)   # str("") is "", a substring of every message: it would excuse any error
    assert names, "assert_clear needs a non-empty name to look for"
    message = str(error)
    assert any(n in message for n in names), f"{type(error).__name__}({message!r}) names none of {names}"


def init_fields(cls) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


@pytest.fixture(autouse=True)
def _own_generator():
    with seeded(99):
        yield


@pytest.mark.parametrize("peft_type", sorted(PEFT_TYPE_TO_CONFIG))
@more
@given(data=st.data())
def test_any_value_in_any_peft_config_field_works_or_is_named(peft_type, data):
    cls = PEFT_TYPE_TO_CONFIG[peft_type]
    field = data.draw(st.sampled_from(init_fields(cls)), label="field")
    value = data.draw(junk, label="value")
    required = {k: v for k, v in REQUIRED.items() if k in init_fields(cls) and k != field}
    try:
        config = cls(**required, **{field: value})
    except BaseException as e:
        assert_clear(e, field)
        return
    try:
        peft = get_peft_model(build_gpt(0), config)
        with no_grad():
            peft(np.zeros((1, 4), np.int64))
    except BaseException as e:          # accepted by the config, refused by the model: name the field or value
        assert_clear(e, field, repr(value), str(value))
        return
    again = PEFT_TYPE_TO_CONFIG[peft_type].from_dict(config.to_dict())    # what save_pretrained writes, read back
    assert again == config


@more
@given(data=st.data())
def test_any_value_in_any_gpt_config_field_works_or_is_named(data):
    field = data.draw(st.sampled_from(init_fields(GPTConfig)), label="field")
    value = data.draw(junk, label="value")
    small = dict(vocab_size=16, context_length=8, d_model=8, n_layer=1, n_head=2, d_ff=8)
    try:
        GPTConfig(**{**small, field: value})
    except BaseException as e:
        assert_clear(e, field)


@pytest.mark.parametrize("make", [AdamW, SGD])
@more
@given(data=st.data())
def test_any_optimizer_argument_works_or_is_named(make, data):
    arg = data.draw(st.sampled_from(["lr", "weight_decay", "betas", "eps"] if make is AdamW
                                    else ["lr", "weight_decay", "momentum"]), label="argument")
    value = data.draw(junk, label="value")
    params = build_gpt(0).parameters()
    try:
        make(params, **({"lr": 0.1} | {arg: value}))
    except BaseException as e:
        assert_clear(e, arg)


arrays = st.builds(
    lambda shape, dtype, lo, seed: np.random.default_rng(seed).integers(lo, lo + 90, shape).astype(dtype),
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.float32, np.bool_]),
    lo=st.sampled_from([-150, -100, -1, 0, 30]), seed=st.integers(0, 9))


@more
@given(ids=arrays, targets=arrays, peft=st.booleans())
def test_any_ids_and_targets_give_a_loss_or_a_named_error(ids, targets, peft):
    model = build_gpt(0)
    if peft:
        model = get_peft_model(model, LoraConfig(r=2, init_lora_weights=False))
    try:
        loss = causal_lm_loss(model, ids, targets)
    except BaseException as e:
        assert_clear(e, *INPUT_NAMES)
        return
    assert np.isfinite(loss.item())
    with no_grad():
        out, _ = model(ids)
    assert out.shape == (*ids.shape, 64)


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    with seeded(5):
        get_peft_model(build_gpt(0), LoraConfig(r=2)).save_pretrained(str(folder))
    return folder, json.loads((folder / "adapter_config.json").read_text())


@more
@given(data=st.data())
def test_any_value_in_a_saved_adapter_config_loads_or_is_named_with_the_file(saved_adapter, data):
    folder, saved = saved_adapter
    field = data.draw(st.sampled_from(sorted(saved)), label="field")
    value = data.draw(junk, label="value")
    (folder / "adapter_config.json").write_text(json.dumps({**saved, field: value}))
    try:
        PeftModel.from_pretrained(build_gpt(0), str(folder))
    except BaseException as e:
        assert_clear(e, field, repr(value), str(value), "adapter_config.json")
        assert isinstance(e, AdapterError) and str(folder) in str(e), f"{type(e).__name__}: {e}"
    finally:
        (folder / "adapter_config.json").write_text(json.dumps(saved))
