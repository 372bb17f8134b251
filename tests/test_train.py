"""The training loop: it learns, it stops cleanly on NaN, it is reproducible, and it counts honestly."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import minipeft
from minipeft.nn import GPT, GPTConfig, Module, Parameter
from minipeft.optim import SGD, AdamW
from minipeft.train import TrainResult, train
from minipeft.workshop import pretrain

QUIET = dict(progress=False, log_every=0)


def _batch(seed: int = 0, B: int = 4, T: int = 16, V: int = 64):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (B, T))
    return x, np.roll(x, -1, axis=1)


def _model(**overrides) -> GPT:
    minipeft.manual_seed(0)
    return GPT(GPTConfig.from_preset("test", **overrides))


def test_overfits_one_fixed_batch(keep_rng):
    # 64 random next-token targets: memorizing them takes ~35 AdamW steps at lr 1e-2 (start loss ~ ln 64 = 4.16)
    model = _model()
    x, y = _batch()
    res = train(model, lambda step: {"input_ids": x, "targets": y}, steps=80,
                optimizer=AdamW(model.parameters(), lr=1e-2), **QUIET)
    assert isinstance(res, TrainResult) and len(res.losses) == 80
    assert res.losses[0] == pytest.approx(np.log(64), rel=0.05)
    assert res.final_loss < 0.1 * res.losses[0], res.losses[::10]
    assert res.tokens_seen == 80 * x.size and res.tokens_per_s > 0 and res.wall_time_s > 0


def test_sgd_at_the_same_lr_does_not_overfit_in_that_budget(keep_rng):
    # the contrast that makes the test above meaningful: a weak optimizer fails the same bar
    model = _model()
    x, y = _batch()
    res = train(model, lambda step: (x, y), steps=80, optimizer=SGD(model.parameters(), lr=1e-2), **QUIET)
    assert res.final_loss > 0.5 * res.losses[0]


def test_nan_loss_raises_naming_the_step_and_leaves_parameters_untouched(keep_rng):
    model = _model()
    x, y = _batch()
    snapshot = {}

    def batches(step):
        if step == 3:
            snapshot.update({n: p.data.copy() for n, p in model.named_parameters()})
            model.ln_f.weight.data[0] = np.nan
        return x, y

    opt = AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(FloatingPointError, match=r"step 3: the loss is nan.*learning rate.*data"):
        train(model, batches, steps=10, optimizer=opt, **QUIET)
    for n, p in model.named_parameters():
        if n != "ln_f.weight":
            assert p.data.tobytes() == snapshot[n].tobytes(), f"{n} was updated at the failing step"
        assert p.grad is None
    assert all(st["step"] == 3 for st in opt.state.values())


class _Overflow(Module):
    """A finite loss whose gradient overflows float32: loss = sum(w * 1e30) with w ~ 1e-30."""

    def __init__(self):
        self.w = Parameter(np.full(4, 1e-30, dtype=np.float32))

    def forward(self, x, y):
        return None, (self.w * np.float32(1e30)).sum()


def test_infinite_gradient_norm_raises_before_the_update():
    model = _Overflow()                                 # not a GPT: its loss comes through loss_fn
    with pytest.raises(FloatingPointError, match="step 0: the gradient norm is inf"):
        train(model, lambda s: (np.zeros((1, 1), int), np.zeros((1, 1), int)), steps=2,
              optimizer=SGD(model.parameters(), lr=0.1), loss_fn=lambda m, x, y: m(x, y)[1], **QUIET)
    assert np.all(minipeft.to_numpy(model.w.data) == np.float32(1e-30))


def test_loss_fn_is_called_with_model_x_y_and_its_loss_is_trained(keep_rng):
    model = _model()
    x, y = _batch()
    calls = []

    def loss_fn(m, xb, yb):
        calls.append((m, xb.shape, yb.shape))
        return m(xb, yb)[1] * 0.0                       # a zero loss: nothing may change
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    res = train(model, lambda s: (x, y), steps=3, optimizer=SGD(model.parameters(), lr=1.0), loss_fn=loss_fn,
                **QUIET)
    assert calls == [(model, x.shape, y.shape)] * 3 and res.losses == [0.0] * 3
    assert all(np.array_equal(p.numpy(), before[n]) for n, p in model.named_parameters())
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        train(model, lambda s: (x, y), steps=1, optimizer=SGD(model.parameters(), lr=0.1), loss_fn="ce", **QUIET)


def test_targets_of_another_shape_or_all_ignored_raise_before_any_step(keep_rng):
    # (8, 2) targets for (2, 8) ids hold as many numbers; they used to train silently on the wrong positions
    model = _model()
    x = np.zeros((2, 8), np.int64)
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"targets have shape \(8, 2\) but input_ids \(2, 8\)"):
        train(model, lambda s: (x, np.zeros((8, 2), np.int64)), steps=1, optimizer=opt, **QUIET)
    with pytest.raises(ValueError, match="every target is ignore_index=-100"):
        train(model, lambda s: (x, np.full((2, 8), -100)), steps=1, optimizer=opt, **QUIET)


def test_an_all_ignored_batch_stops_before_weight_decay_moves_anything(keep_rng):
    # loss 0 used to train anyway, and AdamW's decay shrank every weight with nothing learned
    model = _model()
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    x, y = _batch(B=2)
    batches = [(x, y), (x, np.full_like(y, -100))]
    with pytest.raises(ValueError, match="every target is ignore_index=-100"):
        train(model, batches, steps=2, optimizer=AdamW(model.parameters(), weight_decay=0.5), **QUIET)
    moved = [n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), before[n])]
    assert moved                                              # step 0 trained
    after_one = {n: p.numpy().copy() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="every target is ignore_index=-100"):
        train(model, batches[1:], steps=1, optimizer=AdamW(model.parameters(), weight_decay=0.5), **QUIET)
    assert all(np.array_equal(p.numpy(), after_one[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("value", [float("nan"), -1e-3, float("inf"), None, "1e-3"])
def test_a_schedule_that_returns_no_learning_rate_is_named_with_its_step(keep_rng, value):
    model = _model()
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}

    def warmup_by_zero(step):
        return 1e-3 if step < 2 else value

    with pytest.raises(ValueError, match=re.escape(f"step 2: the learning-rate schedule warmup_by_zero(2) returned "
                                                   f"{value!r}; a schedule must return a finite number >= 0")):
        train(model, lambda s: _batch(B=2), steps=4, optimizer=SGD(model.parameters(), lr=0.1), schedule=warmup_by_zero,
              **QUIET)
    assert any(not np.array_equal(p.numpy(), before[n]) for n, p in model.named_parameters())   # steps 0, 1 ran


def test_same_seed_gives_bit_identical_weights_and_the_seed_matters(keep_rng):
    def run(seed):
        model = _model(dropout=0.2)  # dropout draws from the seeded generator
        x, y = _batch()
        train(model, lambda s: (x, y), steps=5, optimizer=AdamW(model.parameters(), lr=1e-2), seed=seed, **QUIET)
        return {n: p.data.copy() for n, p in model.named_parameters()}

    a, b, c = run(1), run(1), run(2)
    assert all(a[n].tobytes() == b[n].tobytes() for n in a)
    assert any(a[n].tobytes() != c[n].tobytes() for n in a)


def test_iterable_batches_ignored_targets_eval_and_schedule(keep_rng):
    model = _model()
    x, y = _batch(B=2)
    y = y.copy()
    y[:, :5] = -100  # e.g. a prompt whose tokens are not trained on
    batches = [{"input_ids": x, "targets": y} for _ in range(5)]
    modes, lrs = [], []

    def eval_fn(m):
        modes.append(m.training)
        return {"n": len(modes)}

    def schedule(step):
        lrs.append(step)
        return 1e-3 * (step + 1)

    opt = AdamW(model.parameters(), lr=1.0)
    res = train(model, batches, steps=5, optimizer=opt, schedule=schedule, eval_fn=eval_fn, eval_every=2, **QUIET)
    assert res.tokens_seen == 5 * 2 * (16 - 5)
    assert [s for s, _ in res.eval_history] == [2, 4, 5] and res.eval_history[-1][1] == {"n": 3}
    assert modes == [False, False, False] and model.training
    assert lrs == [0, 1, 2, 3, 4] and opt.lr == pytest.approx(5e-3)


def test_too_few_batches_and_bad_arguments_raise(keep_rng):
    model = _model()
    opt = AdamW(model.parameters())
    with pytest.raises(ValueError, match="holds 2 batches but steps=3"):
        train(model, [_batch(), _batch()], steps=3, optimizer=opt, **QUIET)
    with pytest.raises(ValueError, match="ran out after 2 steps"):
        train(model, iter([_batch(), _batch()]), steps=3, optimizer=opt, **QUIET)
    with pytest.raises(ValueError, match="steps"):
        train(model, [_batch()], steps=0, optimizer=opt, **QUIET)
    with pytest.raises(KeyError, match="input_ids"):
        train(model, [{"x": 1}], steps=1, optimizer=opt, **QUIET)


def test_measure_memory_reports_a_plausible_peak(keep_rng):
    model = _model()
    x, y = _batch()
    res = train(model, lambda s: (x, y), steps=2, optimizer=AdamW(model.parameters()), measure_memory=True, **QUIET)
    n_bytes = model.num_parameters() * 4
    # at least the gradients and Adam's m and v (3 x params) were allocated inside the run
    assert res.peak_memory_bytes >= 3 * n_bytes
    assert res.peak_memory_bytes < 100 * 2**20


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 0, "batch_size must be an int >= 1"), ("steps", 2.5, "steps must be an int"),
    ("warmup", 50, r"warmup must be in \[0, steps=40\)"), ("min_lr", 1.0, "min_lr <= lr"),
    ("preset", "huge", "not a GPT preset"), ("overrides", (("d_model", -1),), "d_model"),
    ("corpus_weights", (("poems", 1.0),), "unknown document kinds"),
])
def test_a_bad_pretraining_recipe_is_refused_before_any_work(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(pretrain.QUICK, **{field: value})
