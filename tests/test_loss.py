"""causal_lm_loss: the model's own loss at target positions, for a GPT and a PeftModel, and clear input errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_gpt import V, build_gpt

from minipeft import Tensor
from minipeft.loss import causal_lm_loss
from minipeft.peft import LoraConfig, get_peft_model


def _batch(seed: int = 0, B: int = 2, T: int = 8):
    rng = np.random.default_rng(seed)
    ids, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    targets[:, :3] = -100
    return ids, targets


def test_equals_the_forward_loss_of_a_gpt_and_of_a_peft_model(float64, keep_rng):
    ids, targets = _batch()
    base = build_gpt(0).to(np.float64)
    plain = causal_lm_loss(base, ids, targets).item()
    assert plain == pytest.approx(base(ids, targets)[1].item(), rel=1e-12)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted = causal_lm_loss(peft, ids, targets)
    assert adapted.item() == pytest.approx(peft(ids, targets)[1].item(), rel=1e-12)
    assert abs(adapted.item() - plain) > 1e-6                       # the adapter is in the loss
    adapted.backward()
    assert all(p.grad is not None for p in peft.parameters(trainable_only=True))


def test_accepts_tensors_and_a_custom_ignore_index(float64):
    ids, targets = _batch(1)
    model = build_gpt(0).to(np.float64)
    expected = model(ids, np.where(targets == -100, -1, targets), ignore_index=-1)[1].item()
    got = causal_lm_loss(model, Tensor(ids), Tensor(np.where(targets == -100, -1, targets)), ignore_index=-1)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("targets, exc, message", [
    (np.zeros((8, 2), np.int64), ValueError,
     re.escape("targets have shape (8, 2) but input_ids (2, 8); they must match")),
    (np.where(np.arange(14).reshape(2, 7) < 3, -100, 5), ValueError,   # one short, some ignored: rows misalign
     re.escape("targets have shape (2, 7) but input_ids (2, 8); they must match")),
    (np.zeros((2, 8), np.float32), TypeError, "targets must be integer token ids, got dtype float32"),
    (np.full((2, 8), -100), ValueError, "every target is ignore_index=-100, so there is no loss to learn from; "
                                        "check the batch's loss mask"),
])
def test_bad_targets_raise_naming_the_value_and_the_fix(targets, exc, message):
    with pytest.raises(exc, match=message):
        causal_lm_loss(build_gpt(), np.zeros((2, 8), np.int64), targets)
