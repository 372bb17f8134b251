"""ops.linear_cross_entropy: the LM head and the cross-entropy in chunks of rows, and the training loss through it.

Float64 comparisons with the unchunked cross_entropy(linear(h, W, b)): both sum the same terms, the chunked one
in other groups (dW and db add up per chunk), so they differ by rounding, a few ulps of the largest term times the
number of terms (<= ~100 here): rtol = 1e-12 with atol = 1e-12 * max(1, max|reference|) leaves two orders of
margin, while any wrong formula is off by O(1).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from grad_check import grad_check
from llama_helpers import build_llama
from test_gpt import build_gpt
from test_qlora import quantized_gpt, quantized_llama

import minipeft as mp
from minipeft import Tensor, ops, to_numpy
from minipeft.loss import causal_lm_loss, linear_head
from minipeft.memory import measure_step
from minipeft.nn.causal_lm import CausalLM
from minipeft.nn.layers import Dropout
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM
from minipeft.ops import head_loss
from minipeft.peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

RTOL = 1e-12


def assert_close(got, want, what: str) -> None:
    got, want = to_numpy(got), to_numpy(want)
    atol = RTOL * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


@pytest.fixture(params=[True, False], ids=["fast", "reference"])
def fast(request):
    """Each test on the fast path and on the reference path."""
    with mp.fast_ops(request.param):
        yield request.param


def head_case(N: int = 7, C: int = 5, V: int = 11, dtype=np.float64, seed: int = 0):
    """h (N, C), W (V, C), b (V,), targets (N,) with rows 0, 1, 2 and 5 ignored (rows 0-2: a whole chunk of 3)."""
    rng = np.random.default_rng(seed)
    h, W, b = (rng.standard_normal(s).astype(dtype) for s in ((N, C), (V, C), (V,)))
    t = rng.integers(0, V, N)
    t[[0, 1, 2, 5]] = -100
    return h, W, b, t


def run(loss_of, arrays, needs=(True, True, True)):
    """loss_of(h, W, b) on fresh tensors, backward; (loss, [grads of h, W, b])."""
    ts = [None if a is None else Tensor(a.copy(), requires_grad=n) for a, n in zip(arrays, needs, strict=True)]
    loss = loss_of(*ts)
    loss.backward()
    return loss.data, [None if t is None else t.grad for t in ts]


def unchunked(t):
    return lambda h, W, b: ops.cross_entropy(ops.linear(h, W, b), t)


def chunked(t, **kw):
    return lambda h, W, b: ops.linear_cross_entropy(h, W, t, bias=b, **kw)


def test_gradients_match_central_differences(fast):
    h, W, b, t = head_case()
    grad_check(chunked(t, chunk_rows=2), [h, W, b], "linear_cross_entropy")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 6, 7, 100])
def test_equals_the_unchunked_loss_for_every_chunk_size(fast, rows, bias):
    """Chunks that divide N, that do not (a short last chunk), one row each, one chunk, a chunk wider than N; rows
    0-2 ignored: with 3 rows a chunk, a chunk with no target at all."""
    h, W, b, t = head_case()
    b = b if bias else None
    want_loss, want = run(unchunked(t), (h, W, b))
    got_loss, got = run(chunked(t, chunk_rows=rows), (h, W, b))
    assert_close(got_loss, want_loss, "loss")
    for name, g, w in zip("hWb", got, want, strict=True):
        assert (g is None) == (w is None) == (name == "b" and not bias)
        if w is not None:
            assert_close(g, w, f"gradient of {name}")


def test_every_target_ignored_gives_zero_loss_and_zero_gradients(fast):
    h, W, b, _ = head_case()
    loss, grads = run(chunked(np.full(7, -100), chunk_rows=3), (h, W, b))
    assert float(loss) == 0.0 and all(not np.any(to_numpy(g)) for g in grads)


@pytest.mark.parametrize("bias", [True, False])
def test_one_chunk_is_bit_identical_to_the_head_then_the_loss(fast, bias):
    """At the mini GPT's shapes (C 128, vocab 2,048; 512 rows) in float32 every row fits one chunk, and the loss and
    each gradient are the very bits of cross_entropy(linear(h, W, b)): training's numbers do not change."""
    h, W, b, t = head_case(N=512, C=128, V=2048, dtype=np.float32)
    assert head_loss.rows_per_chunk(2048, 4) >= 512
    b = b if bias else None
    want_loss, want = run(unchunked(t), (h, W, b))
    got_loss, got = run(chunked(t), (h, W, b))
    assert to_numpy(got_loss).tobytes() == to_numpy(want_loss).tobytes()
    for g, w in zip(got, want, strict=True):
        assert (g is None and w is None) or to_numpy(g).tobytes() == to_numpy(w).tobytes()


def test_a_training_step_of_the_mini_gpt_is_bit_identical(fast, monkeypatch, keep_rng):
    """causal_lm_loss on the mini GPT (one chunk) gives the loss and every gradient of the unchunked head."""
    mp.manual_seed(0)
    model = build_gpt(0, preset="mini")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2048, (4, 64))
    targets = np.where(np.arange(64) < 24, -100, np.roll(ids, -1, axis=1))    # a prompt without targets
    results = []
    for unchunked_head in (False, True):
        if unchunked_head:
            monkeypatch.setattr(type(model), "linear_head", lambda self: None)   # the unchunked path
        model.zero_grad()
        loss = causal_lm_loss(model, ids, targets)
        loss.backward()
        results.append((loss.numpy().tobytes(), {n: p.grad.tobytes() for n, p in model.named_parameters()}))
    assert results[0] == results[1]


def test_a_frozen_head_forms_no_weight_gradient(fast):
    """The PEFT case: h needs a gradient, the head's W and b do not; the backward spends no (V, rows) x (rows, C)
    product on dW (while a trained head spends one per chunk)."""
    h, W, b, t = head_case()
    V, C = W.shape
    for trains, n_dW in ((False, 0), (True, 3)):
        with ops.record_matmuls() as log:
            _, (dh, dW, db) = run(chunked(t, chunk_rows=3), (h, W, b), needs=(True, trains, trains))
        assert dh is not None and (dW is None) == (db is None) == (not trains)
        assert sum(1 for a, c in log if a[0] == V and c[1] == C) == n_dW


def test_the_full_logits_are_never_formed():
    """SmolLM2's 49,152-token vocabulary, 512 rows, float32: CHUNK_BYTES gives chunks of 170 rows (33 MB of
    logits each, the (512, V) logits would be 101 MB); every head product, forward and backward, is one chunk's."""
    h, W, b, t = head_case(N=512, C=8, V=49152, dtype=np.float32)
    rows = head_loss.rows_per_chunk(49152, 4)
    assert rows == 170 and rows * 49152 * 4 <= head_loss.CHUNK_BYTES
    with ops.record_matmuls() as log:
        run(chunked(t), (h, W, None), needs=(True, False, False))
    heads = [a[0] for a, c in log if c == (8, 49152)]             # (rows, C) @ (C, V)
    assert heads == [170, 170, 170, 2] * 2                         # the forward's chunks, then the backward's


def test_a_training_steps_peak_drops_by_the_logits(monkeypatch, keep_rng):
    """A made-up Llama with an 8,192-token vocabulary, LoRA, 512 target rows: the unchunked step keeps the logits
    and their softmax for the backward and forms their gradient there (3 x 16 MiB in float32 at its peak); the
    chunked step keeps one (N, V) block at most (at the default budget the rows are one chunk: the reference forms
    it again in the backward, the fast path keeps it from the forward) and 1/8 of one in chunks of 64 rows.
    Measured: peak 52.0 MiB unchunked, 20.2 MiB in one chunk, 8.1 MiB in chunks of 64 rows."""
    mp.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8192, context_length=256, d_model=64, n_layer=1, n_head=2, n_kv_head=1, d_ff=128)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 8192, (2, 256)), rng.integers(0, 8192, (2, 256))
    logits = 2 * 256 * 8192 * 4
    one = measure_step(model, (x, y))
    chunks = measure_step(model, (x, y), loss_fn=functools.partial(causal_lm_loss, chunk_rows=64))
    monkeypatch.setattr(LlamaForCausalLM, "linear_head", lambda self: None)
    before = measure_step(model, (x, y))
    assert before.activations - one.activations > 0.9 * logits            # the logits no longer kept
    assert before.activations - chunks.activations > 1.9 * logits         # ... nor, in chunks, the softmax
    assert before.peak - one.peak > 1.9 * logits
    assert before.peak - chunks.peak > 2.6 * logits                      # ... and 7/8 of the gradient's block


def _peft(config):
    return lambda base: get_peft_model(base, config)


MODELS = {
    "gpt": (lambda: build_gpt(0).to(np.float64), None),
    "gpt untied": (lambda: build_gpt(0, tie_embeddings=False).to(np.float64), None),
    "llama": (lambda: build_llama(0, np.float64), None),
    "gpt lora": (lambda: build_gpt(0).to(np.float64), _peft(LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                      init_lora_weights=False))),
    "llama lora": (lambda: build_llama(0, np.float64), _peft(LoraConfig(r=2, target_modules="all-linear",
                                                                        init_lora_weights=False))),
    "gpt prompt tuning": (lambda: build_gpt(0).to(np.float64), _peft(PromptTuningConfig(num_virtual_tokens=3))),
    "llama prefix tuning": (lambda: build_llama(0, np.float64), _peft(PrefixTuningConfig(num_virtual_tokens=3))),
    "gpt qlora": (lambda: quantized_gpt(0, np.float64), _peft(LoraConfig(r=2, target_modules="all-linear",
                                                                         init_lora_weights=False))),
    "llama qlora": (lambda: quantized_llama(0, np.float64), _peft(LoraConfig(r=2, target_modules="all-linear",
                                                                             init_lora_weights=False))),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_causal_lm_loss_chunks_the_head_of_both_bases_and_the_peft_methods(name, fast, monkeypatch, float64):
    """Chunks of 3 rows: the loss and every trainable gradient equal the unchunked head's (virtual tokens of
    prompt and prefix tuning shift the positions, not the rows the head sees); every head product is a chunk's."""
    build, wrap = MODELS[name]
    base = build()
    model = base if wrap is None else wrap(base)
    W, _ = linear_head(model)
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 64, (2, 8)), rng.integers(0, 64, (2, 8))
    targets[:, :3] = -100                                             # 10 target rows: chunks of 3, 3, 3, 1
    results = []
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(type(base), "linear_head", lambda self: None)
        model.zero_grad()
        with ops.record_matmuls() as log:
            loss = causal_lm_loss(model, ids, targets, chunk_rows=3)
        loss.backward()
        grads = {n: to_numpy(p.grad) for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads, [a[0] for a, c in log if c == W.shape[::-1]]))
    (got, got_grads, rows), (want, want_grads, plain_rows) = results
    assert rows == [3, 3, 3, 1] and plain_rows == [10]
    assert_close(got, want, "loss")
    assert got_grads.keys() == want_grads.keys() and got_grads
    for n, g in got_grads.items():
        assert_close(g, want_grads[n], n)


@pytest.mark.parametrize("config", [LoraConfig(r=2, target_modules=["lm_head"]), LoraConfig(
    r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])], ids=["lora on lm_head", "modules_to_save"])
def test_an_adapted_head_runs_unchunked(config, float64):
    """A module wrapping lm_head must run its own forward: no linear_head, and the loss is the model's own."""
    base = build_gpt(0, tie_embeddings=False).to(np.float64)
    assert linear_head(base) == (base.lm_head.weight, None)
    model = get_peft_model(base, config)
    assert linear_head(model) is None
    rng = np.random.default_rng(2)
    ids, targets = rng.integers(0, 64, (2, 8)), rng.integers(0, 64, (2, 8))
    loss = causal_lm_loss(model, ids, targets, chunk_rows=3)
    assert_close(loss.item(), model(ids, targets)[1].item(), "loss")


def test_a_model_without_linear_head_runs_its_head():
    model = build_gpt(0, tie_embeddings=False)
    W, b = CausalLM.linear_head(model)
    assert W is model.lm_head.weight and b is model.lm_head.bias
    model.lm_head = Dropout(0.0)                                   # a head module that is not a plain Linear
    assert CausalLM.linear_head(model) is None
    assert linear_head(object()) is None


@pytest.mark.parametrize("args, kw, exc, message", [
    (((7, 5), (11, 5), (11,), (7,)), {"chunk_rows": 0}, ValueError, "chunk_rows must be None (chosen by "
                                                                   "CHUNK_BYTES) or an int >= 1, got 0"),
    (((7, 5), (11, 4), None, (7,)), {}, ValueError, "h (7, 5), W (11, 4), b None do not fit"),
    (((2, 4, 5), (11, 5), None, (8,)), {}, ValueError, "flatten the batch and time axes of h first"),
    (((7, 5), (11, 5), (11,), (6,)), {}, ValueError, "h (7, 5) needs targets of shape (7,), got (6,)"),
])
def test_bad_arguments_raise_naming_them(args, kw, exc, message):
    h, W, b, t = (None if s is None else np.zeros(s) for s in args)
    with pytest.raises(exc, match=re.escape(message)):
        ops.linear_cross_entropy(Tensor(h), Tensor(W), t.astype(np.int64), bias=None if b is None else Tensor(b),
                                 **kw)


def test_a_target_out_of_range_raises_naming_it():
    with pytest.raises(IndexError, match=re.escape("linear_cross_entropy: target 11 is out of range for 11 "
                                                   "classes (use ignore_index=-100 for masked positions)")):
        ops.linear_cross_entropy(Tensor(np.zeros((3, 5))), Tensor(np.zeros((11, 5))), np.array([0, 11, -100]))


def test_one_chunk_is_formed_once_on_the_fast_path(fast):
    """All rows in one chunk: the fast path keeps the chunk's exp(z - m) from the forward, so the backward spends no
    second (N, C) x (C, V) product (the reference forms it again, as it does for every chunk)."""
    h, W, b, t = head_case()
    V, C = W.shape
    with ops.record_matmuls() as log:
        run(chunked(t), (h, W, b), needs=(True, False, False))
    assert [a for a, c in log if c == (C, V)] == [(7, C)] * (1 if fast else 2)
