"""The whole model on the reference ops: the same logits, loss and gradients as on the fast paths, and
gradients that match central differences.

`fast_ops(False)` makes every op run its reference implementation (the one a student reads); these tests
prove a model built from them is the model the fast paths run. The whole suite can also run this way:
`MINIPEFT_FAST_OPS=0 python -m pytest -q`.
"""

from __future__ import annotations

import numpy as np
from grad_check import grad_check

import minipeft
from minipeft import Tensor, backend, fast_ops, fast_ops_enabled, to_numpy
from minipeft.loss import causal_lm_loss
from minipeft.nn import GPT, GPTConfig
from minipeft.ops import fastpath


def randomized64(seed: int, **overrides) -> GPT:
    """A float64 "test" GPT with every parameter drawn N(0, 0.5^2) (layer-norm scales around 1), as in
    tests/test_gpt.py: O(1) signal on every path, so a wrong gradient shows as an O(1) error."""
    with backend.fork_rng():
        minipeft.manual_seed(seed)
        model = GPT(GPTConfig.from_preset("test", **overrides)).to(np.float64)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        offset = 1.0 if "ln_" in name and name.endswith(".weight") else 0.0
        p.data = rng.standard_normal(p.shape) * 0.5 + offset
    return model


def assert_close(got, want, what: str, rtol: float = 1e-10) -> None:
    """float64 through a few layers: each op's reordered sums differ by ~1e-15 relative, and the layers
    compound that by at most a few orders; rtol = 1e-10 of the largest entry leaves margin, a bug is O(1)."""
    got, want = to_numpy(got), to_numpy(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())), err_msg=what)


def test_the_switch_turns_fast_paths_off_and_back():
    from minipeft.ops.multihead_attention import AttentionFn

    default = fast_ops_enabled()
    with fast_ops(False):
        assert not fast_ops_enabled() and fastpath.pick(AttentionFn) is AttentionFn
        with fast_ops(True):
            assert fastpath.pick(AttentionFn) is not AttentionFn  # attention has a registered fast path
    assert fast_ops_enabled() == default


def run(model: GPT, fast: bool, ids, targets, prefix):
    """(logits, loss of forward, loss of causal_lm_loss, {name: grad}) with fast ops on or off."""
    model.zero_grad()
    with fast_ops(fast):
        logits, loss = model(ids, targets, prefix_kv=prefix)
        loss.backward()
        lm_loss = causal_lm_loss(model, ids, targets)        # the head on target rows only (getitem, scatter_add)
        lm_loss.backward()
    grads = {n: to_numpy(p.grad) for n, p in model.named_parameters()}
    prefix_grads = [to_numpy(t.grad) for pair in prefix for t in pair]
    return logits, loss, lm_loss, grads, prefix_grads


def test_gpt_logits_loss_and_every_gradient_agree_fast_and_reference():
    model = randomized64(seed=5)
    cfg = model.config
    rng = np.random.default_rng(5)
    B, T, P = 2, 12, 3
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    targets = np.where(rng.random((B, T)) < 0.3, -100, rng.integers(0, cfg.vocab_size, (B, T)))
    # a key/value prefix per layer, so attention also runs with fewer queries than keys (Tq < Tk)
    prefix = [tuple(Tensor(rng.standard_normal((B, P, cfg.d_model)), requires_grad=True) for _ in range(2))
              for _ in range(cfg.n_layer)]
    ref = run(model, False, ids, targets, prefix)
    for pair in prefix:
        for t in pair:
            t.zero_grad()
    fast = run(model, True, ids, targets, prefix)
    assert_close(fast[0], ref[0], "logits")
    assert_close(fast[1].numpy(), ref[1].numpy(), "loss")
    assert_close(fast[2].numpy(), ref[2].numpy(), "causal_lm_loss")
    assert fast[3].keys() == ref[3].keys() and len(ref[3]) == len(model.parameters())
    for name in ref[3]:
        assert np.abs(ref[3][name]).max() > 0 or name.endswith("k_proj.bias"), f"{name}: no gradient reached it"
        assert_close(fast[3][name], ref[3][name], f"gradient of {name}")
    for i, (g_fast, g_ref) in enumerate(zip(fast[4], ref[4], strict=True)):
        assert_close(g_fast, g_ref, f"gradient of prefix tensor {i}")


def test_whole_gpt_on_the_reference_path_matches_central_differences():
    """Every element of every parameter of a small float64 GPT (one layer, d_model 4: 236 elements), on the
    reference ops, against grad_check's central differences (its float64 tolerances are justified there)."""
    model = randomized64(seed=7, vocab_size=8, context_length=6, d_model=4, n_layer=1, d_ff=8)
    rng = np.random.default_rng(7)
    ids, targets = rng.integers(0, 8, (2, 5)), rng.integers(0, 8, (2, 5))
    targets[0, :2] = -100
    owners = []                                             # (module, attribute) of each parameter
    for name, _ in model.named_parameters():
        path, _, attr = name.rpartition(".")
        owners.append((model.get_submodule(path), attr))
    originals = [getattr(m, a) for m, a in owners]

    def loss(*params):
        """The model's loss with its parameters replaced by `params` (so grad_check's tensors get the grads)."""
        for (m, a), p in zip(owners, params, strict=True):
            setattr(m, a, p)
        try:
            return model(ids, targets)[1]
        finally:
            for (m, a), p in zip(owners, originals, strict=True):
                setattr(m, a, p)

    with fast_ops(False):
        grad_check(loss, [to_numpy(p.data) for p in originals], "whole GPT, reference ops")
    assert sum(p.size for p in originals) == 236
