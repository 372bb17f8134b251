"""Benchmark: minipeft against PyTorch + transformers + Hugging Face PEFT on a real LLM (SmolLM2-135M-Instruct).

Both frameworks read the same GGUF file (transformers: `from_pretrained(folder, gguf_file=name)`, offline) into
float32, with the same thread count. Phases (`--phases`):
- train: a LoRA step (r = 8, alpha 16, no dropout; on q_proj and v_proj, and on every linear), a full
  fine-tuning step, and a QLoRA step (NF4 + double quantization, LoRA on every linear), AdamW (lr 1e-4, weight
  decay 0.01), mean cross-entropy over every position of random token ids (targets: the ids shifted by one),
  at each shape (`--shapes 4x128 8x256`: batch x tokens). PyTorch has no NF4 path on the CPU (bitsandbytes'
  4-bit kernels are for CUDA, and it is not in the bench extra), so QLoRA is set against LoRA on every linear
  on the float32 base, minipeft's and PyTorch's (on a GPU too). Before anything is timed, a check job loads
  both models and requires the logits, the first loss and the change one AdamW update makes to it to agree
  for each method (vs_pytorch_llm_work.check says why the float32 tolerances); HF PEFT's LoRA loads
  minipeft's initial adapter file (same A, B = 0). Every timed job's losses are held to the same tolerances
  against its counterpart's, at every shape. The check runs first, then decode and load, then the training
  rounds (the longest part).
- decode: greedy decoding with the KV cache, 128 new tokens after a 64-token prompt, batch 1 (minipeft's
  `generate`) and batch 8 (its KV cache over the batch at once; `generate` takes one sequence), against
  `model.generate(do_sample=False)`: tokens/s = batch x 128 / seconds of the whole call, prefill included;
  the first generated tokens must be the same.
- load: the GGUF file to a ready float32 model (libraries already imported).

Each job runs in a fresh process (`--in-process` runs them here, as `--quick` does): a training job loads the
model, builds the method, takes a warm-up step and `--steps` timed steps, and reports ms per step (median) and
its peak memory growth above the level after loading (CPU: the process's peak resident set, VmHWM reset through
/proc/self/clear_refs after loading; GPU: PyTorch's allocator peak, CuPy's pool); minipeft's jobs also report
its own accounting (minipeft.memory.measure_step) and the same predicted from shapes (predict_step). Rounds
alternate the frameworks (A B, then B A); ratios are medians of per-round ratios.

    python bench/vs_pytorch.py --model smollm2-135m-instruct               # everything, 3 rounds (~1 h on 2 cores)
    python bench/vs_pytorch.py --model smollm2-135m-instruct --phases decode load --rounds 5
    python bench/vs_pytorch.py --model smollm2-135m-instruct --phases train --split   # and by phase
    python bench/vs_pytorch_llm.py --quick                                 # the tiny random Llama, in-process
"""

from __future__ import annotations

import os

# NumPy's BLAS reads its thread count when NumPy loads: set it first, and every job process inherits it
_THREADS = os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
os.environ.setdefault("TQDM_DISABLE", "1")       # transformers' GGUF reader shows a progress bar otherwise

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import backend  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("lora-qv", "lora-all", "full", "qlora")
LABELS = {"lora-qv": "LoRA q,v", "lora-all": "LoRA all linear", "full": "full", "qlora": "QLoRA all linear"}
COUNTERPART = {"qlora": "lora-all"}     # PyTorch's job beside minipeft's QLoRA: LoRA on the float32 base
INSTALL_HINT = ("bench/vs_pytorch_llm.py compares against PyTorch, transformers and Hugging Face PEFT, which "
                "minipeft does not need; install them with `pip install -e '.[bench]'`")


def work_module():
    """bench/vs_pytorch_llm_work.py, imported by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("vs_pytorch_llm_work", HERE / "vs_pytorch_llm_work.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(job: dict, in_process: bool) -> dict:
    """A job's figures, from a fresh Python process that imports this tree's minipeft (or from this one)."""
    if in_process:
        with backend.fork_rng():
            return work_module().run(job)
    root = str(Path(mp.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(HERE / "vs_pytorch_llm.py"), "--job", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"job {job['kind']} {job.get('side', '')} {job.get('method', '')} {job.get('shape', '')} "
                           f"failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out.pop("minipeft") != str(Path(mp.__file__).resolve()):     # an installed copy would measure other code
        raise RuntimeError(f"job {job['kind']}: the job process imported another minipeft than this one "
                           f"({mp.__file__}); run the benchmark from this tree's root")
    return out


def model_path(name: str, quick: bool, tmp: str) -> str:
    """The GGUF file both sides read: the named model's cached file (fetched once), or the tiny random Llama."""
    if quick:
        from minipeft.workshop.llm.tiny import write_tiny_llama

        return str(write_tiny_llama(Path(tmp) / "tiny.gguf"))
    from minipeft.workshop.llm import hub

    if name in hub.MODELS:
        return str(hub.fetch(name))
    if not Path(name).is_file():
        raise SystemExit(f"--model {name!r} is neither a known model ({sorted(hub.MODELS)}) nor a .gguf file")
    return name


def train_check(args, path: str, adapters: str, record: dict) -> None:
    """The check job: every method PyTorch runs, at the first shape; it raises unless both sides agree."""
    theirs = list(dict.fromkeys(COUNTERPART.get(m, m) for m in args.methods))
    record["check"] = run_job({"kind": "check", "model": path, "shape": args.shapes[0], "adapters": adapters,
                               "methods": theirs}, args.in_process)
    for m, c in record["check"].items():
        print(f"  agreement, {LABELS[m]} at {args.shapes[0][0]}x{args.shapes[0][1]}: logits max |diff| "
              f"{c['logits_diff']:.1e} (largest {c['logits_max']:.1f}); losses " + ", ".join(
                  f"{a:.6f} / {b:.6f}" for a, b in c["losses"]) + "  (minipeft / PyTorch)", flush=True)


def train_phase(args, path: str, adapters: str, rows: list) -> None:
    """Every (shape, method): rounds of a minipeft job and a PyTorch job, alternating which goes first."""
    work = work_module()
    theirs_of = {m: COUNTERPART.get(m, m) for m in args.methods}
    for B, T in args.shapes:
        res: dict = {}
        for r in range(args.rounds):
            ran: set = set()
            for m in args.methods:
                jobs = [("minipeft", m)] + ([("pytorch", theirs_of[m])] if theirs_of[m] not in ran else [])
                for side, method in jobs if r % 2 == 0 else jobs[::-1]:
                    job = {"kind": "train", "side": side, "method": method, "shape": [B, T], "model": path,
                           "adapters": adapters, "steps": args.steps, "account": r == 0, "split": args.split}
                    res.setdefault((side, method), []).append(run_job(job, args.in_process))
                    print(f"  {B}x{T} round {r + 1}: {side} {method} "
                          f"{np.median(res[side, method][-1]['ms']):.0f} ms/step", flush=True)
                ran.add(theirs_of[m])
                if theirs_of[m] == m:
                    work.losses_agree(f"{B}x{T} {m} round {r + 1}", res["minipeft", m][-1]["losses"],
                                      res["pytorch", m][-1]["losses"])
        for m in args.methods:
            rows.append(train_row(res, m, theirs_of[m], B, T))


def train_row(res: dict, m: str, theirs: str, B: int, T: int) -> dict:
    """One table row: medians over rounds of each side's median step, of the per-round ratio, of memory."""
    def ms(side, method):
        return [float(np.median(o["ms"])) for o in res[side, method]]

    ours, pt = ms("minipeft", m), ms("pytorch", theirs)
    row = {"shape": f"{B}x{T}", "what": f"train {LABELS[m]}", "unit": "ms/step", "target": "<= 1.0",
           "minipeft": float(np.median(ours)), "pytorch": float(np.median(pt)),
           "ratio": float(np.median([a / b for a, b in zip(ours, pt, strict=True)])),
           "mem_minipeft": int(np.median([o["growth"] for o in res["minipeft", m]])),
           "mem_pytorch": int(np.median([o["growth"] for o in res["pytorch", theirs]])),
           "mem_accounted": res["minipeft", m][0].get("accounted", {}).get("growth"),
           "mem_predicted": res["minipeft", m][0].get("predicted", {}).get("growth"), "pytorch_method": theirs}
    if all("phases" in o for o in res["minipeft", m] + res["pytorch", theirs]):
        for side, method in (("minipeft", m), ("pytorch", theirs)):
            row[f"phases_{side}"] = {k: float(np.median([o["phases"][k] for o in res[side, method]]))
                                     for k in ("forward", "backward", "optimizer")}
    if theirs != m:
        own = ms("minipeft", theirs) if ("minipeft", theirs) in res else None
        row[f"ratio_to_minipeft_{theirs}"] = None if own is None else float(np.median([a / b for a, b in
                                                                                     zip(ours, own, strict=True)]))
    return row


def decode_phase(args, path: str, rows: list, record: dict) -> None:
    """Rounds of a minipeft and a PyTorch decoding job; the first generated tokens must agree."""
    new, prompt = (16, 16) if args.quick else (128, 64)
    res: dict = {"minipeft": [], "pytorch": []}
    for r in range(args.rounds):
        for side in ("minipeft", "pytorch") if r % 2 == 0 else ("pytorch", "minipeft"):
            res[side].append(run_job({"kind": "decode", "side": side, "model": path, "batches": [1, 8],
                                      "new": new, "prompt": prompt}, args.in_process))
    for B, k in ((1, 8), (8, 4)):
        a = [row[:k] for row in res["minipeft"][0][str(B)]["tokens"]]
        b = [row[:k] for row in res["pytorch"][0][str(B)]["tokens"]]
        if a != b:
            raise RuntimeError(f"decode batch {B}: the first {k} greedy tokens differ: minipeft {a[:2]}, "
                               f"PyTorch {b[:2]}")
        record[f"decode agreement batch {B}"] = f"first {k} tokens of {B} rows equal"
        tps_o = [B * new / o[str(B)]["seconds"] for o in res["minipeft"]]
        tps_t = [B * new / t[str(B)]["seconds"] for t in res["pytorch"]]
        rows.append({"shape": f"{B}x{prompt}+{new}", "what": f"decode batch {B}", "unit": "tokens/s",
                     "target": ">= 1.0", "minipeft": float(np.median(tps_o)), "pytorch": float(np.median(tps_t)),
                     "ratio": float(np.median([a / b for a, b in zip(tps_o, tps_t, strict=True)]))})


def load_phase(args, path: str, rows: list) -> None:
    res: dict = {"minipeft": [], "pytorch": []}
    for r in range(args.rounds):
        for side in ("minipeft", "pytorch") if r % 2 == 0 else ("pytorch", "minipeft"):
            res[side].append(run_job({"kind": "load", "side": side, "model": path}, args.in_process)["seconds"])
    o, t = res["minipeft"], res["pytorch"]
    rows.append({"shape": "-", "what": "load GGUF -> ready", "unit": "s", "target": "minipeft <= 10 s",
                 "minipeft": float(np.median(o)), "pytorch": float(np.median(t)),
                 "ratio": float(np.median([a / b for a, b in zip(o, t, strict=True)]))})


def print_table(rows: list) -> None:
    def mib(v):
        return "-" if v is None else v if isinstance(v, str) else f"{v / 2**20:.0f} MiB"

    print(f"\n{'shape':<12}{'what':<24}{'unit':<10}{'minipeft':>10}{'PyTorch':>10}{'mp/pt':>7}  {'target':<17}"
          f"{'mem minipeft':>13}{'mem PyTorch':>12}{'mp accounted':>13}{'mp predicted':>13}")
    for r in rows:
        print(f"{r['shape']:<12}{r['what']:<24}{r['unit']:<10}{r['minipeft']:>10.1f}{r['pytorch']:>10.1f}"
              f"{r['ratio']:>7.3f}  {r['target']:<17}{mib(r.get('mem_minipeft')):>13}{mib(r.get('mem_pytorch')):>12}"
              f"{mib(r.get('mem_accounted')):>13}{mib(r.get('mem_predicted')):>13}")
    split = [r for r in rows if "phases_minipeft" in r]
    if split:
        print(f"\nby phase (ms, medians; --split: as many steps again after the timed ones, each phase synchronized)"
              f"\n{'shape':<12}{'what':<24}" + "".join(f"{k:>22}" for k in ("forward", "backward", "optimizer")))
        for r in split:
            o, t = r["phases_minipeft"], r["phases_pytorch"]
            print(f"{r['shape']:<12}{r['what']:<24}" + "".join(
                f"{o[k]:>8.0f} /{t[k]:>6.0f} ={o[k] / t[k]:>5.2f}" for k in ("forward", "backward", "optimizer")))
        print("each cell: minipeft / PyTorch = ratio")
    for r in rows:
        if "ratio_to_minipeft_lora-all" in r:
            own = r["ratio_to_minipeft_lora-all"]
            print(f"{r['shape']} QLoRA: the PyTorch column is PyTorch's LoRA on every linear of the float32 base "
                  "(PyTorch has no NF4 path on the CPU); QLoRA / minipeft's own LoRA all linear: "
                  + ("-" if own is None else f"{own:.3f}"))


def parse_shape(text: str) -> list[int]:
    try:
        B, T = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxTOKENS, e.g. 4x128") from None
    return [B, T]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a model name (minipeft.workshop.llm.hub) or "
                   "a .gguf file")
    p.add_argument("--phases", nargs="+", choices=["train", "decode", "load"], default=["train", "decode", "load"])
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=None, help="batch x tokens (default 4x128 8x256)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of the two frameworks' jobs")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per job, after one warm-up step")
    p.add_argument("--quick", action="store_true", help="the tiny random Llama, 1 round, in-process (smoke test)")
    p.add_argument("--in-process", action="store_true", help="run the jobs in this process (no memory isolation)")
    p.add_argument("--split", action="store_true", help="also time each training step by phase (forward, "
                   "backward, optimizer), in as many steps again")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--job", help=argparse.SUPPRESS)          # the JSON of one job: run it, print its figures
    args = p.parse_args(argv)
    if args.job:
        print(json.dumps({**work_module().run(json.loads(args.job)), "minipeft": str(Path(mp.__file__).resolve())}))
        return 0
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError:
        print(INSTALL_HINT)
        return 0
    if args.quick:
        args.rounds, args.steps, args.in_process = 1, 1, True
        args.shapes = args.shapes or [[2, 16]]
    args.shapes = args.shapes or [[4, 128], [8, 256]]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    record: dict = {"command": command, "threads": int(_THREADS), "machine": backend.device_name(),
                    "device": mp.get_device(), "load_average_start": os.getloadavg()[0],
                    "torch": torch.__version__, "numpy": np.__version__}
    print(f"machine: {record['machine']}; device {record['device']}; threads {_THREADS} for both "
          f"(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, torch.set_num_threads); float32; load average "
          f"{record['load_average_start']:.1f}\ncommand: {command}", flush=True)
    mem = ("allocator peak growth (torch.cuda.max_memory_allocated; CuPy's pool)" if work_module().on_gpu() else
           "peak RSS growth above the level after loading (VmHWM, reset via /proc/self/clear_refs)")
    print(f"memory columns: {mem}; 'mp accounted': minipeft.memory.measure_step's optimizer state + step peak; "
          "'mp predicted': the same from shapes alone (minipeft/workshop/compare/memory_predict.py)", flush=True)
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(args.model, args.quick, tmp)
        record["model_file"] = path
        if "train" in args.phases:
            train_check(args, path, tmp, record)
        if "decode" in args.phases:
            decode_phase(args, path, rows, record)
        if "load" in args.phases:
            load_phase(args, path, rows)
        if "train" in args.phases:
            train_phase(args, path, tmp, rows)
    record["load_average_end"] = os.getloadavg()[0]
    record["rows"] = rows = sorted(rows, key=lambda r: not r["what"].startswith("train"))   # training first
    print_table(rows)
    print(f"load average: {record['load_average_start']:.1f} at the start, {record['load_average_end']:.1f} at the "
          "end; ratios are medians of per-round ratios")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    mp.tune_allocator()  # keep freed memory for reuse (see BENCHMARKS.md); every job process does the same
    raise SystemExit(main())
