"""Tutorial 00: the training loop that `finetune()` hides, written out by hand.

Claim: a training step is forward, `loss.backward()` and an optimizer update, and each part can be
checked with numbers. (1) The tape's analytic gradients equal central finite differences in
float64, for one op (layer norm) and for single weights deep inside the GPT. (2) AdamW
(Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization", Algorithm 2) is a few
lines of array code: written by hand, it drives the loss down, and one step of it gives the same
parameters as `minipeft.optim.AdamW`. (3) Freezing is where PEFT saves compute: a frozen weight
gets no gradient (`.grad is None`) and its weight-gradient product dW = dy^T x is never formed.
Training only the biases (BitFit, Ben Zaken et al., 2022) drops every dW product, about a third of
a training step's matmul FLOPs; the dx products remain, because the gradient must still flow
down to the lowest trainable bias. Training only the last block also drops the backward below it.

Printed evidence: the loss at initialization next to ln(vocab); finite-difference tables with the
max relative error; the loss falling under the hand-written AdamW; max |hand - AdamW| after one
step; a table of matmuls and FLOPs (counted from the recorded shapes) per training setting.

    python tutorials/00_autograd_by_hand.py          # the "mini" GPT (1.1M parameters), seconds
    python tutorials/00_autograd_by_hand.py --quick  # the "test" GPT, about a second
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import minipeft as mp
from minipeft import ops
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW

# ---- config -------------------------------------------------------------------------------------
SEED = 0
PRESET, BATCH, SEQ_LEN, STEPS = "mini", 8, 48, 40  # B*T = 384 tokens: no weight has a side of 384, so a
QUICK = dict(PRESET="test", BATCH=4, SEQ_LEN=12, STEPS=12)  # dW product is told by its shape (see measure_step)
LR, BETAS, EPS, WEIGHT_DECAY = 3e-3, (0.9, 0.999), 1e-8, 0.01
FD_STEP = 1e-5  # a central difference errs by ~h^2 f'''/6 (truncation) + eps64 |f| / h (the loss's rounding)


def make_batch(cfg: GPTConfig, batch: int, seq_len: int):
    """A fixed batch of random token ids; the targets are the ids shifted by one (next-token prediction)."""
    ids = np.random.default_rng(SEED).integers(0, cfg.vocab_size, size=(batch, seq_len + 1))
    return ids[:, :-1], ids[:, 1:]


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def fd_layer_norm() -> float:
    """Layer norm's backward against central differences, every argument, float64."""
    rng = np.random.default_rng(SEED)
    args = {"x": rng.standard_normal((4, 8)), "weight": 1 + 0.1 * rng.standard_normal(8),
            "bias": 0.1 * rng.standard_normal(8)}
    R = rng.standard_normal((4, 8))  # loss = sum(R * y): a random direction, so no gradient vanishes by symmetry

    def loss(**a) -> float:
        with mp.no_grad():
            return float((ops.layer_norm(mp.Tensor(a["x"]), mp.Tensor(a["weight"]), mp.Tensor(a["bias"])).numpy()
                          * R).sum())

    ts = {k: mp.Tensor(v, requires_grad=True) for k, v in args.items()}
    (ops.layer_norm(ts["x"], ts["weight"], ts["bias"]) * mp.Tensor(R)).sum().backward()

    print("\n1. Layer norm, y = (x - mean) / sqrt(var + eps) * weight + bias, loss = sum(R * y), float64")
    print(f"{'argument':<10}{'index':>8}{'analytic (backward)':>22}{'finite difference':>22}{'rel err':>10}")
    worst = 0.0
    for name, idx in [("x", (0, 0)), ("x", (2, 5)), ("x", (3, 7)), ("weight", (1,)), ("weight", (6,)),
                      ("bias", (4,))]:
        plus, minus = ({k: v.copy() for k, v in args.items()} for _ in range(2))
        plus[name][idx] += FD_STEP
        minus[name][idx] -= FD_STEP
        numeric = (loss(**plus) - loss(**minus)) / (2 * FD_STEP)  # (f(p + h) - f(p - h)) / 2h
        analytic = float(mp.to_numpy(ts[name].grad)[idx])
        worst = max(worst, rel_err(analytic, numeric))
        print(f"{name:<10}{str(idx):>8}{analytic:>22.12f}{numeric:>22.12f}{rel_err(analytic, numeric):>10.1e}")
    print(f"max relative error: {worst:.1e}")
    return worst


def fd_gpt(preset: str) -> float:
    """d loss / d W[i, j] for single weights of a float64 GPT, through the whole tape."""
    prev = mp.get_default_dtype()
    mp.set_default_dtype(np.float64)
    try:
        mp.manual_seed(SEED)
        cfg = GPTConfig.from_preset(preset)
        model = GPT(cfg)
        ids, targets = make_batch(cfg, 2, min(16, cfg.context_length))
        model(ids, targets)[1].backward()
        params = dict(model.named_parameters())
        n = cfg.n_layer - 1
        names = ["wte.weight", "wpe.weight", "blocks.0.attn.q_proj.weight", f"blocks.{n}.mlp.fc2.weight",
                 f"blocks.{n}.ln_2.bias"]
        # in each parameter the entry with the largest gradient: near-zero ones would measure the loss's
        # float64 rounding, eps64 |loss| / h ~ 1e-9, not the backward
        picks = [(k, tuple(int(i) for i in np.unravel_index(np.abs(mp.to_numpy(params[k].grad)).argmax(),
                                                               params[k].shape))) for k in names]
        print(f"\n2. The whole GPT ('{preset}' preset) in float64: d loss / d one weight entry")
        print(f"{'parameter':<28}{'index':>9}{'analytic (backward)':>22}{'finite difference':>22}{'rel err':>10}")
        worst = 0.0
        for name, idx in picks:
            p = params[name]
            old = float(p.data[idx])
            with mp.no_grad():
                p.data[idx] = old + FD_STEP
                up = model(ids, targets)[1].item()
                p.data[idx] = old - FD_STEP
                down = model(ids, targets)[1].item()
                p.data[idx] = old
            numeric, analytic = (up - down) / (2 * FD_STEP), float(mp.to_numpy(p.grad)[idx])
            worst = max(worst, rel_err(analytic, numeric))
            print(f"{name:<28}{str(idx):>9}{analytic:>22.12f}{numeric:>22.12f}{rel_err(analytic, numeric):>10.1e}")
        floor = np.finfo(np.float64).eps * abs(model(ids, targets)[1].item()) / FD_STEP
        smallest = min(abs(float(mp.to_numpy(params[k].grad)[i])) for k, i in picks)
        print(f"max relative error: {worst:.1e}  (the difference itself is good only to eps64 |loss| / h = "
              f"{floor:.1e}, i.e. {floor / smallest:.1e} relative to the smallest gradient shown)")
        return worst
    finally:
        mp.set_default_dtype(prev)


def adamw_step(p, g, m, v, t: int, lr: float, betas=BETAS, eps: float = EPS, wd: float = WEIGHT_DECAY) -> None:
    """One AdamW update of the array p in place; m and v are its moment buffers (zero before step 1)."""
    b1, b2 = betas
    m *= b1
    m += (1 - b1) * g                      # line 7:  m_t = b1 m_{t-1} + (1 - b1) g_t
    v *= b2
    v += (1 - b2) * g * g                  # line 8:  v_t = b2 v_{t-1} + (1 - b2) g_t^2
    m_hat = m / (1 - b1**t)                # line 9:  bias correction (m started at 0, so it is too small)
    v_hat = v / (1 - b2**t)                # line 10: the same for v
    # line 12: theta_t = theta_{t-1} - eta (alpha m_hat / (sqrt(v_hat) + eps) + lambda theta_{t-1}). The decay
    # acts on the weight itself, not through g (that would be Adam + L2, line 6). As in PyTorch, lr multiplies
    # both terms, so weight_decay here is lambda / alpha of the paper.
    p -= lr * (m_hat / (v_hat**0.5 + eps) + wd * p)


def train_by_hand(cfg: GPTConfig, ids, targets, steps: int) -> tuple[float, float]:
    """Forward, backward, hand-written AdamW, for `steps` steps on one batch; returns (first, last) loss."""
    mp.manual_seed(SEED)
    model = GPT(cfg)
    params = model.parameters(trainable_only=True)
    xp = mp.xp()
    state = [(xp.zeros_like(p.data), xp.zeros_like(p.data)) for p in params]  # (m, v) per parameter
    shown = {0, 1, 2, 5, steps} | set(range(10, steps, 10))
    print(f"\n3. Training by hand: {steps} steps of forward, loss.backward(), AdamW written above (lr {LR}), "
          f"one fixed batch of {ids.shape[0]}x{ids.shape[1]} tokens")
    print(f"{'step':>6}{'loss':>10}")
    losses = []
    for t in range(steps + 1):
        for p in params:
            p.grad = None                  # gradients accumulate (+=), so clear them before each backward
        _, loss = model(ids, targets)
        losses.append(loss.item())
        if t in shown:
            print(f"{t:>6}{losses[-1]:>10.4f}")
        if t == steps:
            break
        loss.backward()
        for p, (m, v) in zip(params, state, strict=True):
            adamw_step(p.data, p.grad, m, v, t + 1, LR)
    print(f"the loss fell from {losses[0]:.4f} to {losses[-1]:.4f} (one batch seen over and over: this is "
          "memorization; the point is the mechanics)")
    return losses[0], losses[-1]


def hand_vs_library(cfg: GPTConfig, ids, targets) -> float:
    """One step of the hand-written AdamW (float64, on copies) against minipeft.optim.AdamW (float32, in place)."""
    mp.manual_seed(SEED)
    model = GPT(cfg)
    model(ids, targets)[1].backward()
    named = list(model.named_parameters(trainable_only=True))
    hand = {}
    for name, p in named:
        w, g = mp.to_numpy(p.data).astype(np.float64), mp.to_numpy(p.grad).astype(np.float64)
        adamw_step(w, g, np.zeros_like(w), np.zeros_like(w), 1, LR)
        hand[name] = w
    AdamW([p for _, p in named], lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY).step()
    diff = max(float(np.abs(mp.to_numpy(p.data) - hand[name]).max()) for name, p in named)
    top = max(float(np.abs(w).max()) for w in hand.values())
    ulp = float(np.spacing(np.float32(top)))
    print(f"\none step, hand-written (float64) vs minipeft.optim.AdamW (float32) on all {len(named)} parameters:")
    print(f"max |hand - AdamW| = {diff:.2e}   (one float32 ulp at the largest |weight| {top:.3f} is {ulp:.1e}: "
          "the two differ only by float32 rounding)")
    return diff / ulp


def flops(log) -> int:
    """2 n k m per product (..., n, k) @ (..., k, m), times the broadcast batch size."""
    total = 0
    for a, b in log:
        batch = math.prod(np.broadcast_shapes(a[:-2], b[:-2]))
        total += 2 * batch * a[-2] * a[-1] * b[-1]
    return total


def measure_step(cfg: GPTConfig, ids, targets, trainable) -> dict:
    """One forward + backward with only the parameters `trainable(name)` says; matmuls recorded."""
    mp.manual_seed(SEED)
    model = GPT(cfg)
    for name, p in model.named_parameters():
        p.requires_grad = trainable(name)
    with ops.record_matmuls() as fwd:
        _, loss = model(ids, targets)
    with ops.record_matmuls() as bwd:
        loss.backward()
    n_tokens = ids.size
    params = list(model.named_parameters())
    if any(n_tokens in p.shape for _, p in params):
        raise ValueError(f"B*T = {n_tokens} equals a side of a weight, so a dW product cannot be told from a dx "
                         "product by its shape; change BATCH or SEQ_LEN")
    return dict(
        trainable=sum(p.size for _, p in params if p.requires_grad),
        frozen=[(n, p) for n, p in params if not p.requires_grad],
        fwd=len(fwd), bwd=len(bwd), fwd_flops=flops(fwd), bwd_flops=flops(bwd),
        # dW = dy^T x is (out, N) @ (N, in): it sums over the N = B*T tokens; dx = dy W is (N, out) @ (out, in)
        dW=sum(1 for a, b in bwd if len(a) == 2 and a[0] != n_tokens and a[1] == n_tokens == b[0]),
        grads=sum(p.grad is not None for _, p in params))


def frozen_compute(cfg: GPTConfig, ids, targets) -> dict:
    """Matmuls and FLOPs of one training step for three choices of what trains."""
    last = f"blocks.{cfg.n_layer - 1}."
    settings = {
        "all trainable": lambda name: True,
        "biases only (BitFit)": lambda name: name.endswith(".bias"),
        "last block + ln_f": lambda name: name.startswith((last, "ln_f.")),
    }
    rows = {label: measure_step(cfg, ids, targets, rule) for label, rule in settings.items()}
    full = rows["all trainable"]
    print(f"\n4. Freezing: one forward + backward on {ids.shape[0]}x{ids.shape[1]} tokens, every matmul recorded "
          "with ops.record_matmuls()")
    print(f"{'trained':<22}{'params':>10}{'fwd mm':>8}{'bwd mm':>8}{'of which dW':>12}{'fwd MFLOP':>11}"
          f"{'bwd MFLOP':>11}{'step vs all':>12}")
    for label, r in rows.items():
        ratio = (r["fwd_flops"] + r["bwd_flops"]) / (full["fwd_flops"] + full["bwd_flops"])
        print(f"{label:<22}{r['trainable']:>10,d}{r['fwd']:>8}{r['bwd']:>8}{r['dW']:>12}{r['fwd_flops'] / 1e6:>11.1f}"
              f"{r['bwd_flops'] / 1e6:>11.1f}{ratio:>12.3f}")
    bitfit = rows["biases only (BitFit)"]
    frozen_w = [(n, p) for n, p in bitfit["frozen"] if p.ndim == 2]
    with_grad = sum(p.grad is not None for _, p in frozen_w)
    example, p = next((n, p) for n, p in frozen_w if n.endswith("q_proj.weight"))
    print(f"frozen weights with a gradient (biases only): {with_grad} of {len(frozen_w)}; "
          f"e.g. {example}.requires_grad is {p.requires_grad} and its .grad is {p.grad}")
    saved = 1 - (bitfit["fwd_flops"] + bitfit["bwd_flops"]) / (full["fwd_flops"] + full["bwd_flops"])
    print(f"frozen weights: {full['dW'] - bitfit['dW']} dW matmuls skipped, {saved:.1%} of the step's matmul FLOPs "
          f"saved (backward {bitfit['bwd_flops'] / full['bwd_flops']:.3f}x of full). The dx products stay: "
          "the gradient must reach the lowest trainable bias.")
    print("Training only the last block also skips the backward below it; LoRA keeps W0 frozen the same way, "
          "so its base weights cost no dW either.\nWall-clock step times, which also pay for the work that is not a "
          "matmul (softmax, layer norm, GELU, the loss), are measured in bench/bench_train_step.py (BENCHMARKS.md).")
    return dict(rows=rows, frozen_with_grad=with_grad, saved=saved)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny 'test' GPT; finishes in about a second")
    args = parser.parse_args(argv)
    preset, batch, seq_len, steps = (QUICK[k] if args.quick else globals()[k]
                                     for k in ("PRESET", "BATCH", "SEQ_LEN", "STEPS"))
    cfg = GPTConfig.from_preset(preset)
    ids, targets = make_batch(cfg, batch, seq_len)

    mp.manual_seed(SEED)
    model = GPT(cfg)
    _, loss = model(ids, targets)
    loss.backward()
    n_grads = sum(p.grad is not None for p in model.parameters())
    print(f"GPT '{preset}': {model.num_parameters():,d} parameters; batch of {batch}x{seq_len} token ids")
    print(f"loss at initialization {loss.item():.4f}  vs  ln(vocab) = ln({cfg.vocab_size}) = "
          f"{math.log(cfg.vocab_size):.4f} (a uniform guess); after loss.backward() "
          f"{n_grads} of {len(model.parameters())} parameters have a .grad")

    ln_err = fd_layer_norm()
    gpt_err = fd_gpt(preset)
    first, last = train_by_hand(cfg, ids, targets, steps)
    ulps = hand_vs_library(cfg, ids, targets)
    frozen = frozen_compute(cfg, ids, targets)

    assert ln_err < 1e-7 and gpt_err < 1e-5, "analytic and numeric gradients must agree in float64"
    assert last < first, "the hand-written AdamW must lower the loss"
    assert ulps <= 4, "hand-written AdamW and minipeft.optim.AdamW differ by more than float32 rounding"
    assert frozen["frozen_with_grad"] == 0 and frozen["rows"]["biases only (BitFit)"]["dW"] == 0, \
        "a frozen weight must get no gradient and cost no dW matmul"
    return dict(ln_err=ln_err, gpt_err=gpt_err, first=first, last=last, ulps=ulps, n_layer=cfg.n_layer, **frozen)


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); never done at import
    main()
