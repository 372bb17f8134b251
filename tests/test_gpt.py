"""Spec of the GPT model: config validation, parameter counts, the forward's numbers, causality,
gradients of the whole model, the KV cache, determinism, input errors and frozen-weight compute."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import token_ids

import minipeft
from minipeft import backend, no_grad, ops, to_numpy
from minipeft.loss import causal_lm_loss
from minipeft.nn import GPT, PRESETS, GPTConfig, Linear

V, CTX, C, L, F = 64, 16, 16, 2, 32   # the "test" preset
assert PRESETS["test"] == dict(vocab_size=V, context_length=CTX, d_model=C, n_layer=L, n_head=2, d_ff=F)


def build_gpt(seed: int = 0, preset: str = "test", **overrides) -> GPT:
    """A GPT built from its own seed, leaving the global generator as it was."""
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        return GPT(GPTConfig.from_preset(preset, **overrides))


def randomized64(seed: int) -> GPT:
    """A float64 "test" GPT with every parameter drawn N(0, 0.5^2) (layer-norm scales around 1).

    GPT-2's init (std 0.02, zero biases, unit LN scales) makes many terms tiny or exactly zero; large
    random weights make every path through the model carry O(1) signal, so a wrong gradient or a
    leak through the causal mask shows up as an O(1) error instead of hiding below the tolerance.
    """
    model = build_gpt(seed).to(np.float64)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        offset = 1.0 if "ln_" in name and name.endswith(".weight") else 0.0
        p.data = rng.standard_normal(p.shape) * 0.5 + offset
    return model


@pytest.fixture(scope="module")
def gpt64() -> GPT:
    return randomized64(seed=11)


def expected_num_parameters(cfg: GPTConfig) -> int:
    """Closed form: embeddings V*C + T*C; per block 4 (C*C + C) attention projections, 2 layer norms of
    2C, MLP C*F + F + F*C + C; final layer norm 2C; the tied head adds nothing (an untied one V*C)."""
    Vv, T, Cc, Ff, b = cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.d_ff, int(cfg.bias)
    attn = 4 * (Cc * Cc + b * Cc)
    norms = 2 * (Cc + b * Cc)
    mlp = Cc * Ff + b * Ff + Ff * Cc + b * Cc
    head = 0 if cfg.tie_embeddings else Vv * Cc
    return Vv * Cc + T * Cc + cfg.n_layer * (attn + norms + mlp) + (Cc + b * Cc) + head


# ---- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["vocab_size", "context_length", "d_model", "n_layer", "n_head", "d_ff"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_config_rejects_non_positive_int_sizes(field, value):
    message = f"GPTConfig.{field} must be a positive int, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**{field: value})


def test_config_rejects_d_model_not_divisible_by_n_head():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by n_head=4"):
        GPTConfig(d_model=10, n_head=4)


@pytest.mark.parametrize("p", [1.0, -0.5])
def test_config_rejects_dropout_outside_0_1(p):
    with pytest.raises(ValueError, match=re.escape(f"GPTConfig.dropout must be in [0, 1), got {p}")):
        GPTConfig(dropout=p)


def test_unknown_preset_names_it_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown GPT preset 'huge'.*'gpt2-small', 'mini', 'test'"):
        GPTConfig.from_preset("huge")


def test_from_dict_rejects_unknown_fields_and_round_trips():
    with pytest.raises(ValueError, match=r"unknown fields \['n_embd'\]"):
        GPTConfig.from_dict({"n_embd": 128, "n_layer": 2})
    cfg = GPTConfig.from_preset("mini", dropout=0.1, tie_embeddings=False)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.d_model == 128 and cfg.dropout == 0.1


# ---- parameter counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, count", [("test", 5_760), ("mini", 1_088_256)])
def test_num_parameters_matches_closed_form(preset, count):
    model = build_gpt(preset=preset)
    assert expected_num_parameters(model.config) == count
    assert model.num_parameters() == count
    assert model.num_parameters(trainable_only=True) == count


def test_closed_form_gives_gpt2_small_count():
    # GPT-2 small (tied embeddings) has 124,439,808 parameters; checked on the formula, not a built model
    assert expected_num_parameters(GPTConfig.from_preset("gpt2-small")) == 124_439_808


def test_untied_head_adds_V_times_C_and_no_bias_removes_biases():
    untied = build_gpt(tie_embeddings=False)
    assert untied.num_parameters() == 5_760 + V * C
    assert [n for n, _ in untied.named_parameters()][-1] == "lm_head.weight"
    no_bias = build_gpt(bias=False)
    per_block_biases = 4 * C + 2 * C + F + C          # q/k/v/out, ln_1/ln_2, fc1, fc2
    assert no_bias.num_parameters() == expected_num_parameters(no_bias.config)
    assert no_bias.num_parameters() == 5_760 - L * per_block_biases - C
    assert not any(n.endswith(".bias") for n, _ in no_bias.named_parameters())


# ---- forward -----------------------------------------------------------------------------------------------
@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, CTX), st.integers(0, 2**16))
def test_logits_shape_and_dtype(B, T, seed):
    ids = np.random.default_rng(seed).integers(0, V, (B, T))
    logits, loss = build_gpt()(ids)
    assert logits.shape == (B, T, V) and logits.dtype == np.float32 and loss is None


@settings(max_examples=15)
@given(st.data())
def test_loss_is_numpy_cross_entropy_of_the_logits(gpt64, data):
    B, T = data.draw(st.integers(1, 3)), data.draw(st.integers(1, CTX))
    ids, targets = data.draw(token_ids(V, (B, T))), data.draw(token_ids(V, (B, T)))
    ignored = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))
    ignored[0] = False                                     # at least one position counts
    targets = np.where(np.reshape(ignored, (B, T)), -100, targets)
    logits, loss = gpt64(ids, targets)
    z = logits.numpy().reshape(-1, V)
    t = targets.reshape(-1)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))   # log-softmax
    keep = t != -100
    expected = -logp[np.arange(len(t))[keep], t[keep]].mean()
    assert loss.dtype == np.float64
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_initial_loss_is_log_vocab():
    # std-0.02 init gives near-uniform predictions, so the loss on unrelated targets is close to
    # log(V) = 4.159 (measured within 0.02 for seeds 0-3). Targets equal to the inputs would score
    # ~0.2 lower: the tied head favours the input token's own embedding.
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, V, (4, CTX)), rng.integers(0, V, (4, CTX))
    _, loss = build_gpt()(ids, targets)
    assert abs(loss.item() - math.log(V)) < 0.05


@settings(max_examples=20)
@given(st.data())
def test_causal_changing_later_tokens_leaves_earlier_logits_unchanged(gpt64, data):
    # float64, and an exact expectation: the masked scores are -inf, exp(-inf) is exactly 0, so position
    # <= t never reads a later token. 1e-12 only absorbs a BLAS that might order sums differently (~1e-15
    # for O(1) logits); a leak through the mask moves logits by O(0.1) with these random weights.
    B, T = data.draw(st.integers(1, 2)), data.draw(st.integers(2, CTX))
    t = data.draw(st.integers(0, T - 2))
    ids = data.draw(token_ids(V, (B, T)))
    changed = ids.copy()
    shift = data.draw(token_ids(V - 1, (B, T - t - 1))) + 1       # in 1..V-1: every later token differs
    changed[:, t + 1:] = (ids[:, t + 1:] + shift) % V
    a, b = gpt64(ids)[0].numpy(), gpt64(changed)[0].numpy()
    np.testing.assert_allclose(b[:, :t + 1], a[:, :t + 1], rtol=0, atol=1e-12)
    assert np.abs(b[:, t + 1] - a[:, t + 1]).max() > 1e-6   # the change did reach the positions after t


def test_whole_gpt_gradients_match_central_differences():
    """Every parameter tensor of a float64 "test" GPT, 8 random elements each, against central differences.

    eps = 1e-5: truncation error eps^2 |f'''| / 6 ~ 1e-10 and roundoff 1e-16 |f| / eps ~ 1e-10 (loss ~ 6),
    so the numerical gradient is good to ~1e-9 absolute. Hence |autograd - numerical| <= 1e-9 + 1e-6 |num|:
    relative error 1e-6 on gradients of size ~1e-3..1, a 1e-9 floor for those near 0. A wrong formula is off
    by O(1) relative. (Measured on seeds 0-3: the worst error is 13% of this bound.)
    """
    model = randomized64(seed=2)
    rng = np.random.default_rng(2)
    B, T = 2, 6
    ids, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    _, loss = model(ids, targets)
    loss.backward()

    def f() -> float:
        with no_grad():
            return model(ids, targets)[1].item()

    eps, rtol, atol = 1e-5, 1e-6, 1e-9
    checked = 0
    for name, p in model.named_parameters():
        grad = to_numpy(p.grad).reshape(-1)
        flat = p.data.reshape(-1)                   # a view: writing into it perturbs the model
        for i in rng.choice(flat.size, 8, replace=False):
            old = flat[i]
            flat[i] = old + eps
            fp = f()
            flat[i] = old - eps
            fm = f()
            flat[i] = old
            num = (fp - fm) / (2 * eps)
            assert abs(grad[i] - num) <= atol + rtol * abs(num), \
                f"{name}[{np.unravel_index(i, p.shape)}]: autograd {grad[i]!r} vs numerical {num!r}"
            checked += 1
    assert checked == 8 * len(model.parameters()) == 8 * 36
    # positions >= T were never used: their position embeddings get exactly zero gradient
    assert not to_numpy(model.wpe.weight.grad)[T:].any() and to_numpy(model.wpe.weight.grad)[:T].any()
    # a key bias adds q.b_k to every score of a row, which softmax ignores: its gradient is 0 analytically
    for blk in model.blocks:
        assert np.abs(to_numpy(blk.attn.k_proj.bias.grad)).max() < 1e-12
        assert np.abs(to_numpy(blk.attn.q_proj.bias.grad)).max() > 1e-6


@settings(max_examples=15)
@given(st.data())
def test_kv_cache_chunks_equal_one_full_forward(gpt64, data):
    B, T = data.draw(st.integers(1, 2)), data.draw(st.integers(1, CTX))
    ids = data.draw(token_ids(V, (B, T)))
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=4)) if T > 1 else [])
    full = gpt64(ids)[0].numpy()
    cache = gpt64.new_kv_cache()
    pieces = []
    for lo, hi in zip([0, *cuts], [*cuts, T], strict=True):
        pieces.append(gpt64(ids[:, lo:hi], kv_cache=cache)[0].numpy())
        assert cache.length == hi
    # float64: the cached and the full pass do the same arithmetic up to summation order (~1e-15)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-10)


def test_kv_cache_overflow_names_total_and_context_length(gpt64):
    cache = gpt64.new_kv_cache()
    gpt64(np.zeros((1, 14), np.int64), kv_cache=cache)
    with pytest.raises(ValueError, match="sequence of 17 tokens exceeds the context length 16"):
        gpt64(np.zeros((1, 3), np.int64), kv_cache=cache)
    assert cache.length == 14                               # the failed call left the cache alone


def test_dropout_is_active_in_train_and_off_in_eval(keep_rng):
    model = build_gpt(dropout=0.3)
    ids = np.arange(16).reshape(2, 8)
    model.eval()
    assert np.array_equal(model(ids)[0].numpy(), model(ids)[0].numpy())
    model.train()
    minipeft.manual_seed(9)
    a = model(ids)[0].numpy()
    b = model(ids)[0].numpy()
    minipeft.manual_seed(9)
    assert not np.array_equal(a, b) and np.array_equal(model(ids)[0].numpy(), a)


# ---- training ----------------------------------------------------------------------------------------------
def test_tiny_gpt_overfits_one_batch_with_plain_gradient_descent():
    model = build_gpt(seed=0)
    ids = np.random.default_rng(0).integers(0, V, (4, 9))
    x, y = ids[:, :-1], ids[:, 1:]
    losses = []
    for _ in range(100):
        _, loss = model(x, y)
        losses.append(loss.item())
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= 0.5 * p.grad
    # 32 targets, 64 classes, 5,760 parameters: memorizing is easy; measured ~0.9% of the start at step 100
    assert losses[-1] < 0.05 * losses[0]
    assert losses[50] < losses[0]


def test_manual_seed_makes_weights_and_logits_bit_identical():
    a, b, c = build_gpt(seed=3), build_gpt(seed=3), build_gpt(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(to_numpy(sa[k]), to_numpy(sb[k])) for k in sa)
    ids = np.arange(10).reshape(1, 10)
    assert np.array_equal(a(ids)[0].numpy(), b(ids)[0].numpy())
    # biases and LN parameters start as zeros/ones whatever the seed; every random matrix must differ
    for k in sa:
        assert np.array_equal(to_numpy(sa[k]), to_numpy(sc[k])) == (sa[k].ndim == 1), k


# ---- input errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, exc, message", [
    (np.zeros((1, 4), np.float32), TypeError, "token ids must be integers, got dtype float32"),
    (np.zeros(5, np.int64), ValueError, re.escape("must have shape (batch, time), got (5,)")),
    (np.zeros((1, 17), np.int64), ValueError, "sequence of 17 tokens exceeds the context length 16"),
    (np.array([[1, 64, 2]]), IndexError, "token id 64 is out of range for a vocabulary of 64"),
    (np.array([[1, -1, 2]]), IndexError, "token id -1 is out of range for a vocabulary of 64"),
    (np.zeros((0, 4), np.int64), ValueError, re.escape("token ids have shape (0, 4), an empty batch")),
    (np.zeros((2, 0), np.int64), ValueError, re.escape("token ids have shape (2, 0), an empty batch")),
])
def test_bad_ids_raise_errors_naming_the_problem(ids, exc, message):
    with pytest.raises(exc, match=message):
        build_gpt()(ids)


# ---- frozen weights ----------------------------------------------------------------------------------------
def test_fully_frozen_model_backward_raises():
    model = build_gpt().freeze()
    _, loss = model(np.arange(8).reshape(1, 8), np.arange(8).reshape(1, 8))
    assert not loss.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad.*freeze"):
        loss.backward()


def _backward_matmuls(model: GPT, B: int, T: int) -> list:
    ids = np.random.default_rng(0).integers(0, V, (B, T))
    _, loss = model(ids, ids)
    with ops.record_matmuls() as log:
        loss.backward()
    return log


def test_only_ln_f_trainable_backward_is_one_matmul_and_frozen_weights_stay_put():
    model = build_gpt().freeze()
    for p in model.ln_f.parameters():
        p.requires_grad = True
    before = {k: v.copy() for k, v in model.state_dict().items()}
    B, T = 3, 5
    log = _backward_matmuls(model, B, T)
    # logits = ln_f(x) @ wte^T with wte frozen: only d(ln_f out) = dlogits @ wte, shape (N, V) @ (V, C).
    # Nothing below ln_f needs a gradient, so the blocks' backward does not run at all.
    assert log == [((B * T, V), (V, C))]
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("ln_f."), name
        p.data -= 0.1 * p.grad if p.grad is not None else 0.0
    for name, arr in model.state_dict().items():
        assert np.array_equal(to_numpy(arr), to_numpy(before[name])) != name.startswith("ln_f."), name


def test_frozen_linear_weights_cost_no_weight_gradient_matmul():
    """With every block's Linear weights frozen (embeddings, biases, layer norms trainable) the backward
    still runs through every block but skips exactly the 6 dW = dy^T x matmuls per block.

    Backward matmuls, all trainable: head dx + dW = 2; per block q/k/v/out/fc1/fc2 dx + dW = 12 and the
    attention op's dV, dP, dQ, dK = 4 -> 16 L + 2 = 34 for L = 2. Frozen: 34 - 6 L = 22.
    """
    B, T = 3, 5
    N = B * T                                   # 15: no other dimension of the "test" GPT equals it

    def is_weight_grad(a, b):                   # dW = dy^T (out, N) @ x (N, in)
        return len(a) == 2 and a[1] == N and b[0] == N

    full = _backward_matmuls(build_gpt(), B, T)
    model = build_gpt()
    linears = [m for _, m in model.blocks.named_modules() if isinstance(m, Linear)]
    assert len(linears) == 6 * L
    for lin in linears:
        lin.weight.requires_grad = False
    frozen = _backward_matmuls(model, B, T)
    assert len(full) == 16 * L + 2 == 34
    assert len(frozen) == 10 * L + 2 == 22
    assert sum(is_weight_grad(a, b) for a, b in full) == 6 * L + 1       # + the tied head's dW for wte
    assert [(a, b) for a, b in frozen if is_weight_grad(a, b)] == [((V, N), (N, C))]  # only the head's
    assert all(lin.weight.grad is None and lin.bias.grad is not None for lin in linears)
    assert model.wte.weight.grad is not None


def test_causal_lm_loss_equals_the_full_loss_and_its_gradients_and_heads_only_target_rows(float64):
    """causal_lm_loss runs the head only where a target exists; loss and every gradient are unchanged.

    float64: the two paths sum the same terms in a different order, so they agree to rounding (~1e-15).
    """
    model = build_gpt(0).to(np.float64)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, size=(3, 10))
    targets = rng.integers(0, V, size=(3, 10))
    targets[:, :6] = -100          # a prompt: no loss there
    targets[1, :] = -100           # a row with no target at all
    n_targets = 2 * 4
    results = []
    for loss_of in (lambda: model(ids, targets)[1], lambda: causal_lm_loss(model, ids, targets)):
        model.zero_grad()
        with ops.record_matmuls() as log:
            loss = loss_of()
        loss.backward()
        results.append((loss.item(), {n: to_numpy(p.grad) for n, p in model.named_parameters()}, log))
    (l_full, g_full, log_full), (l_kept, g_kept, log_kept) = results
    assert abs(l_full - l_kept) <= 1e-12 * abs(l_full)
    for name, g in g_full.items():
        np.testing.assert_allclose(g_kept[name], g, rtol=1e-9, atol=1e-12, err_msg=name)
    # the forward's head product (rows, C) @ (C, V): every position for the full loss, only target rows here
    assert [a for a, b in log_full if b == (C, V)] == [(3 * 10, C)]
    assert [a for a, b in log_kept if b == (C, V)] == [(n_targets, C)]
