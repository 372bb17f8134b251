"""Benchmark: minipeft against PyTorch + Hugging Face PEFT on the CPU, the same GPT, side by side in one process.

The PyTorch model is built here, module for module with minipeft's GPT (GPT-2 style: learned positions,
pre-LayerNorm blocks, q/k/v/out projections, tanh GELU, an untied LM head) and the same parameter names, so
minipeft's initial weights copy across by name. PyTorch's attention is its fused
`scaled_dot_product_attention`; LoRA r = 8 (alpha 16, no dropout) on q_proj and v_proj is Hugging Face PEFT's,
its A and B copied from minipeft's adapter. Both sides: float32, AdamW (lr 1e-4, weight decay 0.01), mean
cross-entropy over every position.

Before timing, the first step's loss is checked equal on both sides (and the second's, after one AdamW
update). Then, for each shape, full and LoRA steps of both frameworks are alternated within each round
(minipeft and PyTorch taking turns going first), and the figures are medians over rounds of the per-round
ratios (the machine's speed drifts; BENCHMARKS.md, "Machines"). Each step is split into forward (to the loss),
backward and optimizer (step + zero_grad). Then inference: the base model, LoRA merged, LoRA unmerged.

Threads: both sides use the same count, OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for NumPy (set here before
NumPy loads, default: every core) and `torch.set_num_threads` for PyTorch; the script prints it.

On a GPU (`MINIPEFT_DEVICE=cuda`: minipeft on CuPy) the PyTorch model runs on the same GPU, and both sides
wait for the device (`backend.synchronize`, `torch.cuda.synchronize`) at each phase's edges, since kernels run
asynchronously and a timer read straight after a call would measure only the launch.

PyTorch and PEFT are an optional extra, never a run-time dependency of minipeft:

    pip install -e '.[bench]'                          # torch==2.13.0 (CPU build) and peft
    python bench/vs_pytorch.py                         # the three shapes, 5 rounds each (minutes on 2 cores)
    python bench/vs_pytorch.py --shapes large --rounds 9
    python bench/vs_pytorch.py --quick                 # seconds, a tiny model (smoke test)
    MINIPEFT_DEVICE=cuda python bench/vs_pytorch.py    # both on the GPU (PyTorch built with CUDA)

The real model, SmolLM2-135M-Instruct, against transformers on the same GGUF file (bench/vs_pytorch_llm.py):

    python bench/vs_pytorch.py --model smollm2-135m-instruct
"""

from __future__ import annotations

import os

# NumPy's BLAS reads its thread count when NumPy loads: set it first so both frameworks get the same number.
_THREADS = os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import backend  # noqa: E402
from minipeft.loss import causal_lm_loss  # noqa: E402
from minipeft.nn import GPT, GPTConfig  # noqa: E402
from minipeft.optim import AdamW  # noqa: E402
from minipeft.peft import LoraConfig, get_peft_model  # noqa: E402

INSTALL_HINT = ("bench/vs_pytorch.py compares against PyTorch and Hugging Face PEFT, which minipeft does not "
                "need; install them with `pip install -e '.[bench]'` (torch==2.13.0 CPU build, peft)")

# name: (d_model, n_layer, n_head, vocab, batch, time); d_ff = 4 d_model, untied head, context = time
SHAPES = {
    "mini": (128, 4, 4, 2048, 8, 256),      # the tutorials' model
    "medium": (256, 4, 4, 4096, 16, 128),
    "large": (512, 8, 8, 4096, 8, 128),     # 29.5M parameters
    "quick": (32, 2, 2, 128, 2, 32),        # --quick only
}
LR, WD = 1e-4, 0.01
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])


def import_torch():
    """(torch, peft), or None if either is missing."""
    try:
        import peft
        import torch
    except ImportError:
        return None
    return torch, peft


def torch_gpt_class(torch):
    """A PyTorch GPT with minipeft's module tree and parameter names (so state dicts line up)."""
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self, C, H):
            super().__init__()
            self.n_head = H
            self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(C, C) for _ in range(4))

        def forward(self, x):
            B, T, C = x.shape
            H = self.n_head

            def heads(t):
                return t.view(B, T, H, C // H).transpose(1, 2)                  # (B, H, T, hs)

            y = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)),
                                               heads(self.v_proj(x)), is_causal=True)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self, C, F_):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(C, F_), nn.Linear(F_, C)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
            self.attn, self.mlp = Attention(cfg.d_model, cfg.n_head), MLP(cfg.d_model, cfg.d_ff)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.d_model)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return TorchGPT


def copy_weights(torch, src, dst) -> None:
    """Every parameter of the minipeft model src into the same-named one of the PyTorch model dst."""
    ours = dict(src.named_parameters())
    theirs = dict(dst.named_parameters())
    if set(ours) != set(theirs):
        raise RuntimeError(f"parameter names differ: only minipeft {sorted(set(ours) - set(theirs))[:4]}, "
                           f"only PyTorch {sorted(set(theirs) - set(ours))[:4]}")
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(torch.from_numpy(np.ascontiguousarray(backend.to_numpy(ours[name].data))))


def torch_device(torch) -> str:
    """Where the PyTorch side runs: the GPU when minipeft is on one (so both share it), else the CPU.

    minipeft's strict stand-in for CuPy (its tests' device) runs on the CPU, so PyTorch stays there with it."""
    if mp.get_device() in ("cpu", "strict"):
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"minipeft is on {mp.get_device()} but this PyTorch ({torch.__version__}) sees no CUDA GPU: "
                         "install a CUDA build of torch, or unset MINIPEFT_DEVICE to compare on the CPU")
    return "cuda"


def sync(torch) -> None:
    """Wait for both frameworks' queued GPU work (nothing to wait for on the CPU)."""
    backend.synchronize()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def build(torch, peft, shape: str, lora: bool):
    """(minipeft model, its AdamW, PyTorch model, its AdamW) with the same weights, on the same device."""
    d, L, H, V, _, T = SHAPES[shape]
    cfg = GPTConfig(vocab_size=V, context_length=T, d_model=d, n_layer=L, n_head=H, d_ff=4 * d,
                    tie_embeddings=False)
    mp.manual_seed(0)
    ours = GPT(cfg)
    theirs = torch_gpt_class(torch)(cfg).to(torch_device(torch))
    if lora:
        ours = get_peft_model(ours, LoraConfig(**LORA))
        theirs = peft.get_peft_model(theirs, peft.LoraConfig(**LORA, lora_dropout=0.0))
    copy_weights(torch, ours, theirs)
    opt = AdamW(ours.parameters(trainable_only=True), lr=LR, weight_decay=WD)
    topt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=LR, weight_decay=WD)
    return ours, opt, theirs, topt


def ours_step(model, opt, x, y) -> tuple[float, float, float, float]:
    """One minipeft step; (loss, forward s, backward s, optimizer s)."""
    backend.synchronize()
    t0 = time.perf_counter()
    loss = causal_lm_loss(model, x, y)
    backend.synchronize()
    t1 = time.perf_counter()
    loss.backward()
    backend.synchronize()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad()
    backend.synchronize()
    t3 = time.perf_counter()
    return float(loss.item()), t1 - t0, t2 - t1, t3 - t2


def torch_step(torch, model, opt, x, y) -> tuple[float, float, float, float]:
    """One PyTorch step; (loss, forward s, backward s, optimizer s)."""
    sync(torch)
    t0 = time.perf_counter()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    sync(torch)
    t1 = time.perf_counter()
    loss.backward()
    sync(torch)
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(torch)
    t3 = time.perf_counter()
    return float(loss.item()), t1 - t0, t2 - t1, t3 - t2


def check_losses(torch, pair, x, y, tx, ty, label: str) -> tuple[float, float]:
    """Logits, then two steps, on both sides from the same weights; raise unless they agree. Returns the two
    steps' loss |diff|.

    float32: each logit is a sum over d_model terms through n_layer blocks, in different summation orders on
    the two sides, so logits and losses agree to float32 rounding (~1e-6 relative; the losses, ~ln V, were
    measured 0-1 ulp apart), not necessarily bit for bit; 1e-4 leaves margin, and a weight not copied or a
    different formula is off by far more. After one AdamW update (each weight moves by ~lr, whatever its
    gradient's size, so rounding in a tiny gradient can flip a step's sign) 1e-3.
    """
    ours, opt, theirs, topt = pair
    with mp.no_grad(), torch.no_grad():           # the logits first: a weight not copied shows here at once
        a, b = backend.to_numpy(ours.head(ours.hidden_states(x)).data), theirs(tx).cpu().numpy()
    if np.abs(a - b).max() > 1e-4 * np.abs(b).max():
        raise RuntimeError(f"{label}: logits differ by {np.abs(a - b).max():.2e} (largest {np.abs(b).max():.2e})")
    l1, l2 = ours_step(ours, opt, x, y)[0], torch_step(torch, theirs, topt, tx, ty)[0]
    m1, m2 = ours_step(ours, opt, x, y)[0], torch_step(torch, theirs, topt, tx, ty)[0]
    for step, a, b, tol in ((1, l1, l2, 1e-4), (2, m1, m2, 1e-3)):
        if abs(a - b) > tol * abs(b):
            raise RuntimeError(f"{label}: step {step} loss differs: minipeft {a:.6f}, PyTorch {b:.6f}")
    return abs(l1 - l2), abs(m1 - m2)


def infer_times(torch, pairs, x, tx, rounds: int) -> dict:
    """Per-round forward seconds (no grad) of base, LoRA unmerged and LoRA merged, on both sides."""
    (base, _, tbase, _), (peft_m, _, tpeft, _) = pairs
    for m in (base, peft_m):
        m.eval()
    for m in (tbase, tpeft):
        m.eval()

    def ours(m):
        sync(torch)
        t = time.perf_counter()
        with mp.no_grad():
            m(x)
        sync(torch)
        return time.perf_counter() - t

    def theirs(m):
        sync(torch)
        t = time.perf_counter()
        with torch.inference_mode():
            m(tx)
        sync(torch)
        return time.perf_counter() - t

    out = {k: [] for k in ("base", "unmerged", "merged")}
    ours(base), theirs(tbase)  # warm-up
    for r in range(rounds):
        sides = [("ours", ours, base, peft_m), ("torch", theirs, tbase, tpeft)]
        row = {}
        for side, fn, b, p in sides if r % 2 == 0 else sides[::-1]:
            row[side, "base"] = fn(b)
            row[side, "unmerged"] = fn(p)
            p.merge_adapter()
            row[side, "merged"] = fn(p)
            p.unmerge_adapter()
        for k in out:
            out[k].append((row["ours", k], row["torch", k]))
    return out


def run_shape(torch, peft, shape: str, rounds: int) -> dict:
    """Time one shape; print its rows; return the figures."""
    d, L, H, V, B, T = SHAPES[shape]
    rng = np.random.default_rng(0)
    xn, yn = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    x, y = backend.xp().asarray(xn), backend.xp().asarray(yn)
    tx, ty = torch.from_numpy(xn).to(torch_device(torch)), torch.from_numpy(yn).to(torch_device(torch))
    pairs = {v: build(torch, peft, shape, v == "lora") for v in ("full", "lora")}
    n_params = sum(p.size for p in pairs["full"][0].parameters())
    n_lora = sum(p.size for p in pairs["lora"][0].parameters(trainable_only=True))
    diffs = {v: check_losses(torch, pairs[v], x, y, tx, ty, f"{shape} {v}") for v in pairs}
    # per round: [ours full, torch full, ours lora, torch lora], each (loss, fwd, bwd, opt)
    rows = []
    for r in range(rounds):
        row = {}
        for v in ("full", "lora"):
            ours, opt, theirs, topt = pairs[v]
            order = [("ours", lambda m=ours, o=opt: ours_step(m, o, x, y)),
                     ("torch", lambda m=theirs, o=topt: torch_step(torch, m, o, tx, ty))]
            for side, fn in order if r % 2 == 0 else order[::-1]:
                row[side, v] = np.array(fn()[1:])
        rows.append(row)

    def med(side, v, k=None):
        a = np.array([row[side, v] for row in rows])
        return float(np.median(a.sum(axis=1) if k is None else a[:, k]))

    def ratio(num, den, k=None):
        def pick(row, key):
            return row[key].sum() if k is None else row[key][k]
        return float(np.median([pick(row, num) / pick(row, den) for row in rows]))

    print(f"\n{shape}: d_model {d}, {L} layers, {H} heads, vocab {V}, batch {B} x {T}; {n_params:,} parameters "
          f"(LoRA: {n_lora:,} trainable); {rounds} rounds")
    print(f"  first-step loss |minipeft - PyTorch|: full {diffs['full'][0]:.1e}, LoRA {diffs['lora'][0]:.1e}; "
          f"after one AdamW update: {diffs['full'][1]:.1e}, {diffs['lora'][1]:.1e}")
    print(f"  {'step':<6}{'side':<10}{'ms/step':>9}{'tokens/s':>10}{'fwd ms':>9}{'bwd ms':>9}{'opt ms':>9}"
          f"{'mp/pt':>8}{'fwd':>7}{'bwd':>7}{'opt':>7}")
    for v in ("full", "lora"):
        for side in ("ours", "torch"):
            ms = 1000 * med(side, v)
            name = "minipeft" if side == "ours" else "PyTorch"
            cells = "".join(f"{1000 * med(side, v, k):>9.1f}" for k in range(3))
            rat = ""
            if side == "ours":
                rat = f"{ratio(('ours', v), ('torch', v)):>8.3f}" + "".join(
                    f"{ratio(('ours', v), ('torch', v), k):>7.2f}" for k in range(3))
            print(f"  {v:<6}{name:<10}{ms:>9.1f}{B * T / (ms / 1000):>10.0f}{cells}{rat}")
    res = {
        "full": ratio(("ours", "full"), ("torch", "full")),
        "lora": ratio(("ours", "lora"), ("torch", "lora")),
        "lora/full torch": ratio(("torch", "lora"), ("torch", "full")),
        "lora/full ours": ratio(("ours", "lora"), ("ours", "full")),
    }
    print(f"  minipeft / PyTorch: full {res['full']:.3f}, LoRA {res['lora']:.3f}; LoRA / full: PyTorch "
          f"{res['lora/full torch']:.3f}, minipeft {res['lora/full ours']:.3f}  (medians of per-round ratios)")
    inf = infer_times(torch, (pairs["full"], pairs["lora"]), x, tx, rounds)
    print(f"  inference, forward of {B} x {T} tokens, no grad:  " + "   ".join(
        f"{k} {1000 * np.median([a for a, _ in inf[k]]):.1f} / {1000 * np.median([b for _, b in inf[k]]):.1f} ms "
        f"({np.median([a / b for a, b in inf[k]]):.2f})" for k in inf) + "   (minipeft / PyTorch (ratio))")
    res.update({f"infer {k}": float(np.median([a / b for a, b in inf[k]])) for k in inf})
    return res


def torch_profile(torch, peft, shape: str, rows: int = 14) -> None:
    """PyTorch's own per-op profile (torch.profiler, self CPU time) of one full fine-tuning step at `shape`."""
    from torch.profiler import ProfilerActivity, profile

    _, _, model, opt = build(torch, peft, shape, lora=False)
    d, L, H, V, B, T = SHAPES[shape]
    rng = np.random.default_rng(0)
    dev = torch_device(torch)
    x, y = (torch.from_numpy(rng.integers(0, V, (B, T))).to(dev) for _ in range(2))
    torch_step(torch, model, opt, x, y)                     # warm-up: AdamW state
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    with profile(activities=acts) as prof:
        torch_step(torch, model, opt, x, y)
    print(f"\nPyTorch's profile of one full step, {shape} shape (self CPU time per op kind):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def llm_module():
    """bench/vs_pytorch_llm.py (the real-model comparison), imported by path (bench/ is not a package)."""
    path = Path(__file__).resolve().parent / "vs_pytorch_llm.py"
    spec = importlib.util.spec_from_file_location("vs_pytorch_llm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        return llm_module().main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a real model (smollm2-135m-instruct): run bench/vs_pytorch_llm.py with these "
                   "arguments (its --help lists them)")
    p.add_argument("--shapes", nargs="+", choices=["mini", "medium", "large"], default=["mini", "medium", "large"])
    p.add_argument("--rounds", type=int, default=5, help="alternated rounds per shape")
    p.add_argument("--quick", action="store_true", help="a tiny model, 2 rounds (smoke test)")
    p.add_argument("--torch-profile", action="store_true", help="also print torch.profiler's table of one full "
                   "step at the last shape (where PyTorch's time goes, op by op)")
    args = p.parse_args(argv)
    found = import_torch()
    if found is None:
        print(INSTALL_HINT)
        return 0
    torch, peft = found
    threads = int(_THREADS)
    torch.set_num_threads(threads)
    print(f"machine: {backend.device_name()}; load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}, "
          f"torch {torch.__version__}, peft {peft.__version__}; device {mp.get_device()}")
    if backend.is_gpu():
        torch.backends.cuda.matmul.allow_tf32 = False          # float32 products on both sides: CuPy uses TF32
        torch.backends.cudnn.allow_tf32 = False                # only when CUPY_TF32=1 is set
        tf32 = os.environ.get("CUPY_TF32", "0")
        dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        print(f"both on the GPU (minipeft: {mp.get_device()}, PyTorch: {torch_device(torch)}, {dev}); float32 "
              f"(TF32 off in PyTorch, "
              f"CUPY_TF32={tf32}); "
              f"fast ops {'on' if mp.fast_ops_enabled() else 'off'}")
    else:
        print(f"threads: {threads} for both (NumPy: OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; "
              f"PyTorch: torch.get_num_threads() = {torch.get_num_threads()}); float32; fast ops "
              f"{'on' if mp.fast_ops_enabled() else 'off'}")
    shapes, rounds = (["quick"], 2) if args.quick else (args.shapes, args.rounds)
    results = {s: run_shape(torch, peft, s, rounds) for s in shapes}
    print("\nsummary (median of per-round ratios): shape, minipeft/PyTorch full, LoRA; LoRA/full PyTorch, minipeft")
    for s, r in results.items():
        print(f"  {s:<8}{r['full']:>7.3f}{r['lora']:>7.3f}{r['lora/full torch']:>9.3f}{r['lora/full ours']:>7.3f}")
    if args.torch_profile:
        torch_profile(torch, peft, shapes[-1])
    return 0


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); process-wide, so PyTorch gets it too
    raise SystemExit(main())
