"""A float32 model stays float32 through a training step: every parameter, gradient and optimizer state.

A silent upcast (a Python float or a float64 constant meeting a float32 array the wrong way, a float64 scratch
buffer) would double the memory and halve the speed of everything downstream without changing a result visibly,
so each array is checked by dtype, on the reference ops and on the fast paths.
"""

from __future__ import annotations

import numpy as np
import pytest

import minipeft as mp
from minipeft.loss import causal_lm_loss
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model


@pytest.mark.parametrize("fast", [True, False], ids=["fast ops", "reference ops"])
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied head", "untied head"])
def test_every_array_of_a_step_is_float32(keep_rng, method, fast, tied):
    mp.manual_seed(0)
    model = GPT(GPTConfig.from_preset("test", tie_embeddings=tied))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = list(model.parameters(trainable_only=True))
    opt = AdamW(trainable, lr=1e-3)
    ids = np.random.default_rng(0).integers(0, 64, (2, 16))                # the test preset's vocabulary
    with mp.fast_ops(fast):
        loss = causal_lm_loss(model, ids, np.roll(ids, -1, axis=1))
        assert loss.dtype == np.float32
        loss.backward()
        for name, p in model.named_parameters():
            assert p.dtype == np.float32, f"parameter {name}: {p.dtype}"
            if p.requires_grad:
                assert p.grad is not None and p.grad.dtype == np.float32, f"gradient of {name}"
            else:
                assert p.grad is None, f"frozen {name} got a gradient"
        opt.step()
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float32, f"parameter {name} after the step: {p.data.dtype}"
    assert len(opt.state) == len(trainable)
    for p in trainable:
        st = opt.state[p]
        for key in ("m", "v"):
            assert st[key].dtype == np.float32 and st[key].shape == p.shape, key
    for buf in opt._scratch.values():
        assert buf.dtype == np.float32
