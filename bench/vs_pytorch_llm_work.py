"""The work of bench/vs_pytorch_llm.py, one job per call, each run in a fresh process (or in-process for --quick).

A job is a dict (JSON on the command line of a child process) and returns a dict of figures:
- check: both frameworks load the same GGUF; for each method the logits and the first two losses must agree;
  it writes minipeft's initial LoRA adapters (A random, B zero), which the PyTorch training jobs load.
- train: one framework, one method, one shape: warm-up step, then timed steps; the peak memory growth.
- decode: one framework: greedy decoding with the KV cache at each batch size.
- load: one framework: GGUF file -> a ready float32 model.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from pathlib import Path

import numpy as np

import minipeft as mp
from minipeft import backend

LR, WD = 1e-4, 0.01
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"lora-qv": ["q_proj", "v_proj"], "lora-all": ALL, "qlora": ALL}


def batch(B: int, T: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (B, T + 1): inputs are the first T, targets the same ids shifted by one."""
    ids = np.random.default_rng(0).integers(0, vocab, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def prompts(B: int, T: int, vocab: int) -> np.ndarray:
    """B prompts of T random token ids each (equal lengths: no padding on either side)."""
    return np.random.default_rng(1).integers(0, vocab, (B, T))


# ---- memory: the process's peak resident set, reset where a measurement starts -------------------------------

def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux 4.0+); returns that RSS in bytes."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


# ---- the two frameworks ---------------------------------------------------------------------------------------

def torch_mod():
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))   # as NumPy's BLAS
    return torch


def on_gpu() -> bool:
    """minipeft on a real GPU (CuPy); its tests' CuPy stand-in, "strict", runs on the CPU, as PyTorch then does."""
    return backend.is_gpu() and mp.get_device() != "strict"


def torch_device(torch) -> str:
    return "cuda" if on_gpu() else "cpu"


def sync(torch=None) -> None:
    backend.synchronize()
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def load_ours(path: str):
    from minipeft.workshop.llm import load_pretrained

    return load_pretrained(path, progress=False).model


def load_theirs(torch, path: str):
    import transformers

    p = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    return model.to(torch_device(torch))


def build_ours(model, method: str):
    """(model to train, its AdamW): full fine-tuning, LoRA r=8 (seeded: the A the check job saved), or QLoRA."""
    from minipeft.optim import AdamW
    from minipeft.peft import LoraConfig, get_peft_model
    from minipeft.quant import quantize_model

    model.train()
    if method == "full":
        for p in model.parameters():
            p.requires_grad = True
    else:
        if method == "qlora":
            quantize_model(model)                        # QLoRA's recipe: NF4 + double quantization
        with backend.fork_rng():
            backend.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS[method]))
    return model, AdamW(model.parameters(trainable_only=True), lr=LR, weight_decay=WD)


def build_theirs(torch, model, method: str, adapters: str | None):
    """(model to train, torch AdamW): full, or HF PEFT loading minipeft's saved adapter (same A, B = 0)."""
    model.train()
    if method == "full":
        model.requires_grad_(True)
    else:
        import peft

        with warnings.catch_warnings():   # the file's minipeft-only fields (the base's fingerprint), which HF skips
            warnings.filterwarnings("ignore", message="Unexpected keyword arguments")
            model = peft.PeftModel.from_pretrained(model, str(Path(adapters) / method), is_trainable=True).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=LR, weight_decay=WD)


def step_ours(model, opt, x, y) -> float:
    from minipeft.loss import causal_lm_loss

    loss = causal_lm_loss(model, x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return float(loss.item())


def split_step(forward, update, sync_fn) -> tuple[float, dict]:
    """One step timed by phase, either framework: forward (the loss), backward, optimizer (`update`: AdamW's step
    and zeroing), in ms, each phase synchronized."""
    t0 = time.perf_counter()
    loss = forward()
    sync_fn()
    t1 = time.perf_counter()
    loss.backward()
    sync_fn()
    t2 = time.perf_counter()
    update()
    sync_fn()
    t3 = time.perf_counter()
    return float(loss.item()), {"forward": 1000 * (t1 - t0), "backward": 1000 * (t2 - t1),
                                "optimizer": 1000 * (t3 - t2)}


def split_ours(model, opt, x, y, sync_fn) -> tuple[float, dict]:
    from minipeft.loss import causal_lm_loss

    return split_step(lambda: causal_lm_loss(model, x, y), lambda: (opt.step(), opt.zero_grad()), sync_fn)


def split_theirs(torch, model, opt, tx, ty, sync_fn) -> tuple[float, dict]:
    def forward():
        logits = logits_theirs(model, tx)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1))
    return split_step(forward, lambda: (opt.step(), opt.zero_grad(set_to_none=True)), sync_fn)


def logits_theirs(model, tx):
    return model(input_ids=tx).logits


def step_theirs(torch, model, opt, tx, ty) -> float:
    logits = logits_theirs(model, tx)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


# ---- jobs -----------------------------------------------------------------------------------------------------

def check(job: dict) -> dict:
    """Logits, then two AdamW steps, on both sides from the same weights, for each method; raise unless they agree.

    Tolerances (float32, eps 1.2e-7): each logit sums products over d_model and d_ff through every layer in a
    different order on each side (BLAS blocking, fused attention, RMSNorm's mean), so the two agree to float32
    rounding, not bit for bit. Logits: 1e-4 of the largest (SmolLM2's logits, ~30, agree to ~1e-4 absolute,
    ~3e-6 of the largest: tests/test_real_model.py). First loss, a mean of such log-softmaxes: 1e-4 relative.
    Second loss: what one AdamW update changed, l2 - l1, must agree within 5% of itself plus 1e-6 of the loss
    (8 eps: each loss is a mean of log-softmaxes whose rounding errors mostly cancel in the change). The change,
    not the loss: with lr 1e-4 a LoRA update moves the loss by ~1e-4 of itself, below any tolerance on the loss,
    so a check of the loss alone could not see a wrong adapter. AdamW moves every weight by ~lr whatever its
    gradient's size, so rounding can flip the sign of a near-zero gradient's step, but such a weight moves the
    loss by its near-zero gradient times lr: the change agrees far better than 5%, while an adapter A not
    copied or a different gradient is off by more.
    """
    torch = torch_mod()
    ours, theirs = load_ours(job["model"]), load_theirs(torch, job["model"])
    B, T = job["shape"]
    x, y = batch(B, T, ours.config.vocab_size)
    dev = torch_device(torch)
    tx, ty = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    x, y = backend.asarray(x), backend.asarray(y)                  # minipeft's device (CuPy on a GPU)
    out = {}
    for method in sorted(job["methods"], key=lambda m: m == "full"):     # full last: it changes the weights
        a, opt = build_ours(ours, method)
        if method != "full":
            a.save_pretrained(str(Path(job["adapters"]) / method))
        b, topt = build_theirs(torch, theirs, method, job["adapters"])
        out[method] = compare(torch, (a, opt, b, topt), x, y, tx, ty, method)
        if method != "full":
            ours, theirs = a.unload(), b.unload()
    return out


def compare(torch, pair, x, y, tx, ty, label: str) -> dict:
    """The agreement figures of one method (see check); raises RuntimeError naming what differs."""
    a, opt, b, topt = pair
    with mp.no_grad(), torch.no_grad():
        la = backend.to_numpy(a.head(a.hidden_states(x)).data)
        lb = logits_theirs(b, tx).float().cpu().numpy()
    diff, big = float(np.abs(la - lb).max()), float(np.abs(lb).max())
    if not diff <= 1e-4 * big:
        raise RuntimeError(f"{label}: logits differ by {diff:.2e} (largest {big:.2e}, allowed 1e-4 of it): the two "
                           "models do not hold the same weights")
    losses = [(step_ours(a, opt, x, y), step_theirs(torch, b, topt, tx, ty)) for _ in range(2)]
    losses_agree(label, *zip(*losses, strict=True))
    return {"logits_diff": diff, "logits_max": big, "losses": losses}


def losses_agree(label: str, ours, theirs) -> None:
    """The first loss within 1e-4 relative, the change to the second within 5% + 1e-6 of the loss (see check)."""
    (a1, a2), (b1, b2) = ours[:2], theirs[:2]
    if not abs(a1 - b1) <= 1e-4 * abs(b1):
        raise RuntimeError(f"{label}: step 1 loss differs: minipeft {a1:.6f}, PyTorch {b1:.6f} (allowed 1e-4 "
                           "relative)")
    if not abs((a2 - a1) - (b2 - b1)) <= 0.05 * abs(b2 - b1) + 1e-6 * abs(b1):
        raise RuntimeError(f"{label}: one AdamW update changed the loss by {a2 - a1:.3e} in minipeft, {b2 - b1:.3e} "
                           f"in PyTorch (losses {a1:.6f} -> {a2:.6f}, {b1:.6f} -> {b2:.6f}; allowed 5% + 1e-6 of "
                           "the loss): the update or the adapter differs")


def growth_of(sm) -> int:
    """A step's memory above the loaded model: the optimizer state, and the larger of the step's peak and what its
    activations and gradients hold together."""
    return sm.optimizer_state + max(sm.peak, sm.activations + sm.gradients)


def train(job: dict) -> dict:
    """Warm-up step, then job["steps"] timed steps of one framework; ms per step, losses, peak memory growth."""
    from minipeft.generate import core_model

    side, method = job["side"], job["method"]
    B, T = job["shape"]
    torch = torch_mod() if side == "pytorch" else None
    if side == "minipeft":
        model, opt = build_ours(load_ours(job["model"]), method)
        x, y = batch(B, T, core_model(model).config.vocab_size)
        x, y = backend.asarray(x), backend.asarray(y)

        def step():
            return step_ours(model, opt, x, y)

        def split():
            return split_ours(model, opt, x, y, sync)
    else:
        model, opt = build_theirs(torch, load_theirs(torch, job["model"]), method, job.get("adapters"))
        x, y = batch(B, T, model.config.vocab_size)
        dev = torch_device(torch)
        x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

        def step():
            return step_theirs(torch, model, opt, x, y)

        def split():
            return split_theirs(torch, model, opt, x, y, lambda: sync(torch))
    gpu = on_gpu()
    if gpu and side == "pytorch":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    elif gpu:
        from minipeft.memory import PeakMemory

        pm = PeakMemory().__enter__()
    else:
        base = reset_peak_rss()
    losses, ms = [step()], []
    for _ in range(job["steps"]):
        sync(torch)
        t = time.perf_counter()
        losses.append(step())
        sync(torch)
        ms.append(1000 * (time.perf_counter() - t))
    if gpu and side == "pytorch":
        growth = torch.cuda.max_memory_allocated() - base
    elif gpu:
        pm.__exit__(None, None, None)
        growth = pm.peak_bytes
    else:
        growth = peak_rss() - base
    out = {"ms": ms, "losses": losses, "growth": int(growth)}
    if job.get("split"):       # after the timed steps (they stay unsplit): as many steps again, by phase
        phases = [split()[1] for _ in range(job["steps"])]
        out["phases"] = {k: float(np.median([p[k] for p in phases])) for k in phases[0]}
    if side == "minipeft" and job.get("account"):
        from minipeft.memory import measure_step

        sm = measure_step(model, (x, y), optimizer=opt)   # two more steps, traced: minipeft's own accounting
        out["accounted"] = {**sm.as_dict(), "growth": growth_of(sm)}
        from minipeft.peft import LoraConfig
        from minipeft.peft.tuners.lora import NF4_DQ
        from minipeft.workshop.compare.memory_predict import predict_step

        config = "full" if method == "full" else LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS[method])
        pred = predict_step(core_model(model).config, config, batch_size=B, seq_len=T,
                            quantization=NF4_DQ if method == "qlora" else None)       # from shapes alone
        out["predicted"] = {**pred.as_dict(), "growth": growth_of(pred)}
    return out


def greedy_batch(model, ids: np.ndarray, n: int) -> np.ndarray:
    """(B, n) greedy tokens for B prompts of equal length at once, on minipeft's KV cache (generate() takes one
    sequence: this is its loop over a batch)."""
    from minipeft import ops

    xp = backend.xp()
    cache, out, cur = model.new_kv_cache(), [], xp.asarray(ids)
    with mp.no_grad():
        for _ in range(n):                                                      # a prefill, then one token a call
            h = model.hidden_states(cur, kv_cache=cache)                        # (B, T or 1, C)
            logits = model.head(ops.getitem(h, (slice(None), slice(-1, None))))  # (B, 1, V)
            cur = logits.data[:, -1].argmax(-1)[:, None]                         # (B, 1)
            out.append(backend.to_numpy(cur))
    return np.concatenate(out, axis=1)


def decode(job: dict) -> dict:
    """Greedy decoding, job["new"] tokens after prompts of job["prompt"] tokens, at each batch size: seconds for
    the whole call (prefill included) and the tokens of the first row."""
    side, n = job["side"], job["new"]
    out = {}
    if side == "minipeft":
        from minipeft.generate import generate

        model = load_ours(job["model"])
        model.eval()
        V = model.config.vocab_size
        generate(model, prompts(1, 8, V)[0], 4)                                   # warm-up
        for B in job["batches"]:
            p = prompts(B, job["prompt"], V)
            sync()
            t = time.perf_counter()
            toks = np.asarray([generate(model, p[0], n)]) if B == 1 else greedy_batch(model, p, n)
            sync()
            out[str(B)] = {"seconds": time.perf_counter() - t, "tokens": toks.tolist()}
        return out
    torch = torch_mod()
    model = load_theirs(torch, job["model"]).eval()
    model.generation_config.eos_token_id = None      # exactly n new tokens, as minipeft's generate without eos_id
    V, dev = model.config.vocab_size, torch_device(torch)

    def gen(p, k):
        t = torch.from_numpy(p).to(dev)
        with torch.inference_mode():
            return model.generate(t, attention_mask=torch.ones_like(t), do_sample=False, max_new_tokens=k,
                                  min_new_tokens=k, pad_token_id=0)[:, p.shape[1]:]

    gen(prompts(1, 8, V), 4)                                                     # warm-up
    for B in job["batches"]:
        p = prompts(B, job["prompt"], V)
        sync(torch)
        t = time.perf_counter()
        toks = gen(p, n)
        sync(torch)
        out[str(B)] = {"seconds": time.perf_counter() - t, "tokens": toks.cpu().numpy().tolist()}
    return out


def load(job: dict) -> dict:
    """Seconds from the GGUF file to a ready float32 model (the libraries already imported)."""
    torch = torch_mod() if job["side"] == "pytorch" else None
    sync(torch)
    t = time.perf_counter()
    model = load_ours(job["model"]) if torch is None else load_theirs(torch, job["model"])
    sync(torch)
    seconds = time.perf_counter() - t
    del model
    return {"seconds": seconds}


JOBS = {"check": check, "train": train, "decode": decode, "load": load}


def run(job: dict) -> dict:
    return JOBS[job["kind"]](job)
