"""Optimizers, clipping and the schedule: each update checked against its formula computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minipeft import backend, ops
from minipeft.nn import GPT, GPTConfig, Linear, Parameter
from minipeft.optim import SGD, AdamW, clip_grad_norm_, cosine_schedule


def _param(values, grad=None) -> Parameter:
    p = Parameter(backend.asarray(values, dtype=np.float64))
    p.grad = None if grad is None else backend.asarray(grad, dtype=np.float64)
    return p


def N(a) -> np.ndarray:
    """A backend array (numpy or cupy) as numpy, for the comparisons."""
    return backend.to_numpy(a)


def test_adamw_two_steps_match_hand_computed_formula():
    p0 = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
    g1 = np.array([[0.1, -0.2, 0.3], [1.0, -2.0, 0.0]])
    g2 = np.array([[-0.3, 0.1, 0.2], [0.5, 0.5, -1.0]])
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-3, 0.05  # eps large enough that its placement matters
    p = _param(p0)
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    want, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate([g1, g2], start=1):
        p.grad = backend.asarray(g)
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        want = want - lr * wd * want - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(N(p.data), want, rtol=1e-12, atol=1e-14)
    assert opt.state[p]["step"] == 2
    np.testing.assert_allclose(N(opt.state[p]["m"]), m, rtol=1e-12)


def test_adamw_weight_decay_is_decoupled_from_the_gradient():
    # with a zero gradient Adam's step is 0, so only the decay p *= (1 - lr*wd) moves the weight;
    # L2 folded into the gradient (plain Adam) would instead move every entry by about lr
    p = _param([1.0, -2.0, 4.0], grad=[0.0, 0.0, 0.0])
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(N(p.data), np.array([1.0, -2.0, 4.0]) * (1 - 0.1 * 0.5), rtol=1e-15)


def test_param_groups_exclude_bias_from_decay():
    w, b = _param([2.0, 2.0], grad=[0.0, 0.0]), _param([2.0, 2.0], grad=[0.0, 0.0])
    opt = AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_allclose(N(w.data), [1.9, 1.9], rtol=1e-15)
    np.testing.assert_array_equal(N(b.data), [2.0, 2.0])


def test_update_is_in_place_on_the_same_array():
    p = _param([1.0, 2.0], grad=[0.5, -0.5])
    arr = p.data
    AdamW([p], lr=0.1).step()
    assert p.data is arr and not np.array_equal(N(arr), [1.0, 2.0])


def test_state_only_for_trainable_params_and_frozen_stay_bit_identical(keep_rng):
    model = GPT(GPTConfig.from_preset("test"))
    model.freeze()
    head = model.blocks[0].attn.q_proj
    head.weight.requires_grad = True
    frozen_before = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    opt = AdamW(model.parameters(), lr=1e-2)  # all parameters passed (kept, as PyTorch keeps them); one trains
    x = np.arange(12).reshape(2, 6) % 64
    for _ in range(3):
        _, loss = model(x, (x + 1) % 64)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert list(opt.state) == [head.weight]                  # state only where there was a gradient
    assert len(opt.params()) == len(model.parameters())
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None
            assert p.data.tobytes() == frozen_before[n].tobytes(), n


def test_frozen_param_with_a_stray_grad_is_not_updated():
    p, q = _param([1.0, 2.0], grad=[1.0, 1.0]), _param([3.0], grad=[1.0])
    q.requires_grad = False
    opt = AdamW([p, q], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(N(q.data), [3.0])
    assert q not in opt.state and p in opt.state


def test_param_without_grad_is_skipped():
    p, q = _param([1.0], grad=[1.0]), _param([5.0])
    opt = AdamW([p, q], lr=0.1, weight_decay=0.5)  # decay must not touch q either
    opt.step()
    assert q.data[0] == 5.0 and q not in opt.state and p.data[0] != 1.0


def test_lr_is_settable_and_scales_the_step():
    p = _param([0.0], grad=[1.0])
    opt = SGD([p], lr=0.1)
    opt.lr = 0.5
    opt.step()
    assert opt.lr == 0.5 and float(p.data[0]) == pytest.approx(-0.5)


def test_sgd_plain_weight_decay_and_momentum():
    p = _param([1.0, -1.0], grad=[0.5, 0.25])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(N(p.data), [1.0 - 0.05, -1.0 - 0.025], rtol=1e-15)

    p = _param([1.0, -1.0], grad=[0.5, 0.25])
    SGD([p], lr=0.1, weight_decay=0.2).step()  # p -= lr (g + wd p)
    np.testing.assert_allclose(N(p.data), [1.0 - 0.1 * (0.5 + 0.2), -1.0 - 0.1 * (0.25 - 0.2)], rtol=1e-14)

    g1, g2, mom, lr = np.array([1.0, 2.0]), np.array([-1.0, 0.5]), 0.9, 0.1
    p = _param([0.0, 0.0])
    opt = SGD([p], lr=lr, momentum=mom)
    p.grad = backend.asarray(g1)
    opt.step()
    p.grad = backend.asarray(g2)
    opt.step()
    buf2 = mom * g1 + g2
    np.testing.assert_allclose(N(p.data), -lr * g1 - lr * buf2, rtol=1e-14)


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_original_norm():
    a, b = _param([0.0, 0.0], grad=[3.0, 4.0]), _param([0.0], grad=[12.0])  # global norm 13
    norm = clip_grad_norm_([a, b], max_norm=6.5)
    assert norm == 13.0                                 # 9 + 16 + 144 = 169 and its root are exact in float64
    # the scale is max_norm / (norm + 1e-6), as in PyTorch (the 1e-6 guards a zero norm), so the clipped norm sits
    # just under max_norm: 6.5 * 13 / (13 + 1e-6). float64 grads, a handful of roundings (~1.1e-16 each): rel 1e-14
    clipped = 6.5 * 13.0 / (13.0 + 1e-6)
    new = math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum()))
    assert new == pytest.approx(clipped, rel=1e-14) and new < 6.5
    np.testing.assert_allclose(N(a.grad / b.grad[0]), np.array([3.0, 4.0]) / 12.0, rtol=1e-14)  # direction kept
    assert clip_grad_norm_([a, b], max_norm=100.0) == pytest.approx(clipped, rel=1e-14)  # under the limit: as is
    assert math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum())) == pytest.approx(clipped, rel=1e-14)


def test_clip_grad_norm_scales_each_gradient_once_when_grads_share_an_array():
    a, b = Parameter(backend.xp().zeros(2)), Parameter(backend.xp().zeros(2))
    ops.add(a, b).sum().backward()  # add's backward hands the same dy to both leaves
    assert clip_grad_norm_([a, b], max_norm=1.0) == 2.0   # sqrt(1 + 1 + 1 + 1), exact
    # once: 1 * max_norm / (2 + 1e-6), PyTorch's guard as above; float64, one rounding of the scale: rtol 1e-15
    # (twice would give about 0.25)
    np.testing.assert_allclose(N(a.grad), [1 / (2 + 1e-6)] * 2, rtol=1e-15)
    np.testing.assert_allclose(N(b.grad), [1 / (2 + 1e-6)] * 2, rtol=1e-15)


def test_clip_grad_norm_reports_nonfinite_norm_without_scaling():
    a = _param([0.0, 0.0], grad=[np.inf, 1.0])
    assert clip_grad_norm_([a], 1.0) == math.inf
    assert a.grad[1] == 1.0


def test_cosine_schedule_warmup_and_endpoints():
    kw = dict(max_steps=110, warmup_steps=10, max_lr=1.0, min_lr=0.1)
    assert cosine_schedule(0, **kw) == pytest.approx(0.1)             # (0 + 1) / 10 of max_lr
    assert cosine_schedule(4, **kw) == pytest.approx(0.5)
    assert cosine_schedule(9, **kw) == pytest.approx(1.0)
    assert cosine_schedule(10, **kw) == pytest.approx(1.0)            # decay starts at max_lr
    assert cosine_schedule(60, **kw) == pytest.approx(0.55)           # halfway: (max + min) / 2
    assert cosine_schedule(110, **kw) == pytest.approx(0.1)
    assert cosine_schedule(500, **kw) == pytest.approx(0.1)
    lrs = [cosine_schedule(s, **kw) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:], strict=False))
    assert cosine_schedule(0, max_steps=5, warmup_steps=0, max_lr=2.0, min_lr=0.0) == pytest.approx(2.0)


@pytest.mark.parametrize("make, match", [
    (lambda ps: AdamW(ps, lr=0.0), "lr"),
    (lambda ps: AdamW(ps, lr=-1e-3), "lr"),
    (lambda ps: AdamW(ps, betas=(1.0, 0.9)), "betas"),
    (lambda ps: AdamW(ps, eps=0.0), "eps"),
    (lambda ps: AdamW(ps, weight_decay=-0.1), "weight_decay"),
    (lambda ps: SGD(ps, lr=0.1, momentum=1.0), "momentum"),
    (lambda ps: AdamW([], lr=0.1), "empty"),
    (lambda ps: AdamW([{"params": ps, "lr_scale": 2.0}]), "lr_scale"),
    (lambda ps: clip_grad_norm_(ps, 0.0), "max_norm"),
    (lambda ps: cosine_schedule(0, max_steps=10, warmup_steps=11, max_lr=1.0), "warmup_steps"),
    (lambda ps: cosine_schedule(0, max_steps=10, warmup_steps=1, max_lr=1.0, min_lr=2.0), "min_lr"),
])
def test_bad_arguments_raise_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make([_param([1.0])])


def test_all_frozen_raises_and_lr_setter_validates():
    lin = Linear(2, 2).freeze()
    with pytest.raises(ValueError, match="frozen"):
        AdamW(lin.parameters())
    opt = AdamW(Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="lr"):
        opt.lr = float("nan")
    with pytest.raises(TypeError, match="Parameter"):
        AdamW([np.zeros(3)])
