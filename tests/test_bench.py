"""The benchmark script runs (in --quick mode) and reports every figure BENCHMARKS.md quotes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path


def load(script: str):
    """bench/<script>.py, imported by path."""
    path = Path(__file__).parent.parent / "bench" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(script: str) -> None:
    load(script).main(["--quick"])


def test_bench_train_step_quick_runs(capsys, keep_rng):
    """It prints every figure, and its "FLOPs / full" column is each variant's step_flops over full fine-tuning's
    (recomputed here for the --quick shapes)."""
    import numpy as np

    bench = load("bench_train_step")
    bench.main(["--quick"])
    out = capsys.readouterr().out
    for text in ("float32 square matmul rate", "full", "lora q,v", "lora attn+mlp", "q,v biases", "ratio to full",
                 "FLOPs / full", "merged"):
        assert text in out
    rows = {}
    for line in out.splitlines():
        for v in bench.VARIANTS:
            if line.startswith(v + " ") and v not in rows:    # the first table: the pretraining shape
                rows[v] = float(line.split()[-4])            # ... FLOPs/full, ratio to full, peak (two words)
    assert set(rows) == set(bench.VARIANTS), rows
    overrides = {"context_length": 64}
    x = np.random.default_rng(0).integers(0, 64, size=(4, 64))    # FLOPs depend on shapes only: every
    flops = {v: bench.step_flops(*bench.make(v, "test", overrides), x, x) for v in bench.VARIANTS}  # target is set
    for v in bench.VARIANTS:
        assert abs(rows[v] - flops[v] / flops["full"]) <= 0.0005, (v, rows[v], flops)  # printed to 3 decimals
    assert rows["full"] == 1.0


def test_floor_variant_trains_only_the_q_v_biases(keep_rng):
    """The "q,v biases" floor freezes every weight: its step does LoRA q,v's backward minus LoRA's own products,
    so its matmul FLOPs are below LoRA q,v's, which are below full fine-tuning's."""
    import numpy as np

    bench = load("bench_train_step")
    overrides = {"context_length": 16}
    model = bench.make_model("q,v biases", "test", overrides)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 2 * model.config.n_layer
    assert all(n.endswith(("attn.q_proj.bias", "attn.v_proj.bias")) for n in names), names
    x = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 16))
    flops = {v: bench.step_flops(*bench.make(v, "test", overrides), x, x) for v in ("q,v biases", "lora q,v", "full")}
    assert flops["q,v biases"] < flops["lora q,v"] < flops["full"], flops


def test_profile_train_step_quick_runs_and_restores_the_ops(capsys, keep_rng):
    """The profiler's timers cover every op, and are removed afterwards (apply and backward restored)."""
    from minipeft.autograd import Function
    from minipeft.ops import _util, fastpath
    from minipeft.ops.multihead_attention import AttentionFn

    attn = fastpath.pick(AttentionFn)  # the class that runs: the fast path unless MINIPEFT_FAST_OPS=0
    apply_before, backward_before, mm_before = Function.__dict__["apply"], attn.__dict__["backward"], _util.mm
    run_quick("profile_train_step")
    out = capsys.readouterr().out
    # the op names are the classes that ran (e.g. BlockedAttentionFn on the fast path): each ends in these
    for text in ("ratio to full", "AttentionFn.fwd", "AttentionFn.bwd", "LoraLinearFn.bwd", "LinearFn.bwd",
                 "outside the ops", "matrix products", "the rest", "ratio, rest at 2x", "ratio, rest free",
                 "the step by phase", "forward python", "backward python", "optimizer"):
        assert text in out, text
    assert Function.__dict__["apply"] is apply_before and attn.__dict__["backward"] is backward_before
    # the matmul timer is gone too, from every module that calls `mm`
    users = [name for name, m in list(sys.modules.items()) if name.startswith("minipeft") and hasattr(m, "mm")]
    assert {"minipeft.ops._util", "minipeft.ops.multihead_attention", "minipeft.workshop.fast.attention",
            "minipeft.ops.linalg"} <= set(users), users
    assert all(sys.modules[m].mm is mm_before for m in users)


def test_bench_chunks_quick_runs_and_restores_the_chunk_size(capsys):
    """Every chunk size is timed against one whole-array chunk, and the library's CHUNK_ELEMENTS is put back."""
    from minipeft.workshop.fast import _shared

    before = _shared.CHUNK_ELEMENTS
    run_quick("bench_chunks")
    out = capsys.readouterr().out
    for text in ("whole array", "2^13", "2^16", "ratio to whole", f"CHUNK_ELEMENTS = {before}"):
        assert text in out, text
    assert _shared.CHUNK_ELEMENTS == before


def test_bench_qlora_quick_runs(capsys):
    """Dequantization throughput for each shape, and QLoRA's step time as a ratio to LoRA's, fast and reference."""
    run_quick("bench_qlora")
    out = capsys.readouterr().out
    for text in ("NF4 GB/s", "+DQ GB/s", "16x16", "64x64", "ratio to LoRA", "fast ops", "reference ops", "qlora",
                 "dequantizations timed alone"):
        assert text in out, text


def test_pretrain_recipes_checkpoints_and_finetune_checkpoint_quick_run(tmp_path, capsys, keep_rng):
    """Facts against pretraining steps in miniature: a checkpoint every 20 of 40 steps, each fine-tuned and
    scored (one JSON line per checkpoint, with its step and tokens), then tutorial 03's LoRA and full run on one
    of them."""
    import json

    out = tmp_path / "curve.jsonl"
    load("pretrain_recipes").main(["--recipe", "rope-copy-heavy", "--steps", "40", "--checkpoint-every", "20",
                                   "--save", str(tmp_path), "--out", str(out), "--quick"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["at_step"] for r in records] == [20, 40]
    assert [r["tokens"] for r in records] == [20 * 8 * 64, 40 * 8 * 64]       # QUICK: batch 8 x 64 tokens
    for r in records:
        assert set(r["scores"]) == {"dialogsum", "qa"} and set(r["lists"]) == {"first", "second"}
    capsys.readouterr()
    load("finetune_checkpoint").main([str(tmp_path / "rope-copy-heavy-40-at-20.safetensors"),
                                      str(tmp_path / "tokenizer.json"), "--quick"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if "fact_recall" in line] == ["LoRA", "full"]


def test_vs_pytorch_without_torch_prints_how_to_install_and_exits_0(capsys, monkeypatch):
    """PyTorch and PEFT are an optional extra: without them the script says how to get them and succeeds."""
    bench = load("vs_pytorch")
    monkeypatch.setattr(bench, "import_torch", lambda: None)
    assert bench.main(["--quick"]) == 0
    assert "pip install -e '.[bench]'" in capsys.readouterr().out


def test_bench_adamw_quick_runs(capsys, keep_rng):
    run_quick("bench_adamw")
    out = capsys.readouterr().out
    for text in ("AdamW step over", "reference", "chunks of", "ratio to reference"):
        assert text in out, text


def test_vs_pytorch_quick_runs(capsys, keep_rng):
    """With the extra installed: the same weights give the same first-step loss on both sides (the script raises
    otherwise), and every figure BENCHMARKS.md quotes from it is printed."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("peft")
    bench = load("vs_pytorch")
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    from minipeft import backend

    assert ("both on the GPU" if backend.is_gpu() else "threads: ") in out
    for text in ("first-step loss", "minipeft / PyTorch", "LoRA / full", "tokens/s", "inference",
                 "base", "merged", "unmerged", "summary"):
        assert text in out, text


def test_vs_pytorch_quick_runs_on_the_gpu_path(capsys, keep_rng, monkeypatch):
    """The GPU code path (minipeft's arrays on a device, timers fenced by backend.synchronize), run on the strict
    CuPy stand-in so it is exercised without a GPU: the same figures, and each timed phase of a step waits for
    the device on both edges (a timer read without that measures only the kernels' launch)."""
    import numpy as np
    import pytest

    import minipeft
    from minipeft import backend

    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    bench = load("vs_pytorch")
    prev = minipeft.get_device()
    with backend.fork_rng():
        minipeft.set_device("strict")
        try:
            assert bench.main(["--quick"]) == 0
            out = capsys.readouterr().out
            ours, opt, theirs, topt = bench.build(torch, peft, "quick", lora=False)
            xn = np.random.default_rng(0).integers(0, 128, (2, 32))
            x, tx = backend.asarray(xn), torch.from_numpy(xn)
            calls = []
            real = backend.synchronize
            monkeypatch.setattr(backend, "synchronize", lambda: (calls.append(1), real())[1])
            bench.ours_step(ours, opt, x, x)
            assert len(calls) == 4          # before the forward, after it, after the backward, after the update
            bench.torch_step(torch, theirs, topt, tx, tx)
            assert len(calls) == 8          # the PyTorch side's fences wait for minipeft's queue too
        finally:
            minipeft.set_device(prev)
    assert "both on the GPU (minipeft: strict" in out
    for text in ("first-step loss", "minipeft / PyTorch", "tokens/s", "inference", "summary"):
        assert text in out, text


def test_vs_pytorch_check_catches_a_weight_that_differs(keep_rng):
    """The equality check before timing can fail: one PyTorch weight off by 1% and the logits disagree."""
    import numpy as np
    import pytest

    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    bench = load("vs_pytorch")
    x = np.random.default_rng(0).integers(0, 128, (2, 32))
    tx = torch.from_numpy(x).to(bench.torch_device(torch))     # the GPU under MINIPEFT_DEVICE=cuda
    pair = bench.build(torch, peft, "quick", lora=False)
    bench.check_losses(torch, bench.build(torch, peft, "quick", lora=False), x, x, tx, tx, "same weights")
    with torch.no_grad():
        pair[2].blocks[0].mlp.fc1.weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="logits differ"):
        bench.check_losses(torch, pair, x, x, tx, tx, "one weight off")


def test_lr_probe_quick_picks_the_lowest_held_out_loss_per_method(capsys, keep_rng):
    """Each method at each rate gives a finite held-out loss, soft prompts included (their virtual tokens take
    context), and the best rate reported is the one with the lowest loss."""
    methods = ("prompt tuning n=20", "prefix tuning n=20", "BitFit")
    out = load("lr_probe").main(["--quick", "--task", "sentiment", "--methods", *methods, "--lrs", "0.01", "0.1"])
    results, best = out["results"], out["best"]
    assert set(results) == {(m, lr) for m in methods for lr in (0.01, 0.1)}
    assert all(math.isfinite(v) and v > 0 for v in results.values())
    for m, lr in best.items():
        assert results[(m, lr)] == min(v for (mm, _), v in results.items() if mm == m)
    assert "best lr:" in capsys.readouterr().out


def test_lr_probe_recipes_builds_the_comparisons_methods_and_prints_their_rates(capsys, keep_rng):
    """--recipes probes the comparison's own recipes (sparse's scoring batches included) on the LLM code path and
    prints the best rate of each as an LLM_RATES entry."""
    out = load("lr_probe").main(["--quick", "--base", "smollm2-135m-instruct", "--task", "sentiment", "--recipes",
                                 "sparse", "prefix-tuning", "--lrs", "0.01", "0.1"])
    printed = capsys.readouterr().out
    assert set(out["results"]) == {(m, lr) for m in ("sparse", "prefix-tuning") for lr in (0.01, 0.1)}
    for m, lr in out["best"].items():
        assert f'"{m}": ({lr:g}, "best held-out loss of 0.01/0.1, 4 steps of 4' in printed


def _tiny_llama(tmp_path) -> str:
    from minipeft.workshop.llm.tiny import write_tiny_llama

    return str(write_tiny_llama(tmp_path / "tiny.gguf"))


def test_vs_pytorch_llm_quick_runs_every_phase_after_the_agreement_checks(tmp_path, capsys, keep_rng):
    """The tiny random Llama through the whole real-model comparison: the check job's agreement figures for every
    method PyTorch runs, then one row per (shape, phase/method), each with both frameworks' figures, in the
    table and in --json."""
    import json

    import pytest

    for name in ("torch", "transformers", "peft"):
        pytest.importorskip(name)
    out_file = tmp_path / "figures.json"
    assert load("vs_pytorch_llm").main(["--quick", "--split", "--json", str(out_file)]) == 0
    out = capsys.readouterr().out
    record = json.loads(out_file.read_text())
    assert set(record["check"]) == {"lora-qv", "lora-all", "full"}       # QLoRA has no PyTorch counterpart
    for c in record["check"].values():
        assert c["logits_diff"] <= 1e-4 * c["logits_max"] and len(c["losses"]) == 2
    whats = [(r["shape"], r["what"]) for r in record["rows"]]
    assert whats == [("2x16", "train LoRA q,v"), ("2x16", "train LoRA all linear"), ("2x16", "train full"),
                     ("2x16", "train QLoRA all linear"), ("1x16+16", "decode batch 1"), ("8x16+16", "decode batch 8"),
                     ("-", "load GGUF -> ready")]
    for r in record["rows"]:
        assert r["minipeft"] > 0 and r["pytorch"] > 0 and math.isclose(r["ratio"], r["minipeft"] / r["pytorch"])
        assert f"{r['what']:<24}{r['unit']:<10}" in out                   # the row is in the printed table
    train = [r for r in record["rows"] if r["what"].startswith("train")]
    for r in train:                                # predicted from shapes: the accounting's figure, within the tape's
        assert 0 <= r["mem_accounted"] - r["mem_predicted"] <= 64 * 2**10, r["what"]    # Python objects (64 KiB)
    assert train[3]["pytorch_method"] == "lora-all" and train[3]["ratio_to_minipeft_lora-all"] > 0
    for r in train:                                # --split: each side's step by phase, printed as a ratio
        for side in ("minipeft", "pytorch"):
            assert set(r[f"phases_{side}"]) == {"forward", "backward", "optimizer"}
            assert all(v > 0 for v in r[f"phases_{side}"].values())
        o, t = r["phases_minipeft"]["backward"], r["phases_pytorch"]["backward"]
        assert f"{o:>8.0f} /{t:>6.0f} ={o / t:>5.2f}" in out
    assert record["decode agreement batch 1"] == "first 8 tokens of 1 rows equal"
    for text in ("agreement, LoRA q,v at 2x16: logits max |diff|", "agreement, full at 2x16", "threads 2" if
                 record["threads"] == 2 else "threads ", "load average", "command: python", "peak RSS growth",
                 "no NF4 path on the CPU", "mp predicted", "by phase (ms, medians"):
        assert text in out, text


def test_vs_pytorch_llm_check_catches_a_weight_or_an_adapter_that_differs(tmp_path, keep_rng):
    """The agreement check before timing can fail: one PyTorch weight 1% off and the logits differ; HF's LoRA A
    twice minipeft's (same logits: B = 0) and the change one AdamW update makes to the loss differs."""
    import pytest

    for name in ("transformers", "peft"):
        pytest.importorskip(name)
    work = load("vs_pytorch_llm_work")
    torch = work.torch_mod()
    path = _tiny_llama(tmp_path)
    x, y = work.batch(2, 16, 269)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def pair(method: str):
        ours, opt = work.build_ours(work.load_ours(path), method)
        if method != "full":
            ours.save_pretrained(str(tmp_path / method))
        return (ours, opt, *work.build_theirs(torch, work.load_theirs(torch, path), method, str(tmp_path)))

    for method in ("full", "lora-qv"):
        work.compare(torch, pair(method), x, y, tx, ty, f"same {method}")
    full = pair("full")
    with torch.no_grad():
        full[2].model.layers[0].mlp.down_proj.weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="logits differ"):
        work.compare(torch, full, x, y, tx, ty, "one weight off")
    lora = pair("lora-qv")
    with torch.no_grad():
        for name, p in lora[2].named_parameters():
            if "lora_A" in name:
                p.mul_(2)
    with pytest.raises(RuntimeError, match="one AdamW update changed the loss"):
        work.compare(torch, lora, x, y, tx, ty, "adapter A off")


def test_vs_pytorch_llm_job_runs_in_a_fresh_process_on_this_tree(tmp_path):
    """A training job in its own process (what every timed job is, outside --quick): this tree's minipeft, its
    steps' times and losses, its peak RSS growth, and minipeft's own accounting of the step."""
    import pytest

    bench = load("vs_pytorch_llm")
    job = {"kind": "train", "side": "minipeft", "method": "lora-qv", "shape": [2, 16], "model": _tiny_llama(tmp_path),
           "steps": 2, "account": True}
    out = bench.run_job(job, in_process=False)             # raises if the job imported another minipeft
    assert len(out["ms"]) == 2 and len(out["losses"]) == 3 and out["growth"] >= 0
    # Adam's m and v (2 x 4 bytes) for r = 8 on q_proj (32 -> 32) and v_proj (32 -> 16) in each of 2 layers
    assert out["accounted"]["growth"] > 0 and out["accounted"]["optimizer_state"] == 2 * 4 * 2 * 8 * (64 + 48)
    with_bad = {**job, "method": "no-such-method"}
    with pytest.raises(RuntimeError, match="no-such-method"):                  # a job's failure names the job
        bench.run_job(with_bad, in_process=False)


def test_vs_pytorch_llm_batched_greedy_equals_generate_row_by_row(tmp_path, keep_rng):
    """minipeft's batch-8 decoding (its KV cache over the batch) gives each row what generate() gives it alone."""
    import numpy as np

    from minipeft.generate import generate
    from minipeft.workshop.llm import load_pretrained

    work = load("vs_pytorch_llm_work")
    model = load_pretrained(_tiny_llama(tmp_path), progress=False).model
    p = np.random.default_rng(3).integers(0, 269, (3, 7))
    got = work.greedy_batch(model, p, 5)
    assert got.shape == (3, 5)
    assert got.tolist() == [generate(model, row, 5) for row in p]


def test_vs_pytorch_dispatches_model_to_the_real_model_comparison(monkeypatch):
    """`bench/vs_pytorch.py --model NAME ...` runs bench/vs_pytorch_llm.py with the same arguments."""
    bench = load("vs_pytorch")
    seen = []

    class Fake:
        @staticmethod
        def main(argv):
            seen.append(argv)
            return 0

    monkeypatch.setattr(bench, "llm_module", lambda: Fake)
    assert bench.main(["--model", "smollm2-135m-instruct", "--phases", "load"]) == 0
    assert seen == [["--model", "smollm2-135m-instruct", "--phases", "load"]]


def test_vs_pytorch_llm_without_torch_prints_how_to_install_and_exits_0(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)                   # import transformers -> ImportError
    assert load("vs_pytorch_llm").main(["--quick"]) == 0
    assert "pip install -e '.[bench]'" in capsys.readouterr().out
