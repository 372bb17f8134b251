"""The benchmark script runs (in --quick mode) and reports every figure BENCHMARKS.md quotes."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_bench_train_step_quick_runs(capsys, keep_rng):
    path = Path(__file__).parent.parent / "bench" / "bench_train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])
    out = capsys.readouterr().out
    for text in ("float32 square matmul rate", "full", "lora q,v", "lora attn+mlp", "ratio to full", "merged"):
        assert text in out
