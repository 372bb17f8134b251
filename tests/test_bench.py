"""The benchmark script runs (in --quick mode) and reports every figure BENCHMARKS.md quotes."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def run_quick(script: str) -> None:
    """Import bench/<script>.py by path and run its main(["--quick"])."""
    path = Path(__file__).parent.parent / "bench" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])


def test_bench_train_step_quick_runs(capsys, keep_rng):
    run_quick("bench_train_step")
    out = capsys.readouterr().out
    for text in ("float32 square matmul rate", "full", "lora q,v", "lora attn+mlp", "ratio to full", "merged"):
        assert text in out


def test_profile_train_step_quick_runs_and_restores_the_ops(capsys, keep_rng):
    """The profiler's timers cover every op, and are removed afterwards (apply and backward restored)."""
    from minipeft.autograd import Function
    from minipeft.ops.attention import Attention

    apply_before, backward_before = Function.__dict__["apply"], Attention.__dict__["backward"]
    run_quick("profile_train_step")
    out = capsys.readouterr().out
    for text in ("ratio to full", "Attention.fwd", "Attention.bwd", "LoraLinearFn.bwd", "Linear.bwd",
                 "outside the ops"):
        assert text in out, text
    assert Function.__dict__["apply"] is apply_before and Attention.__dict__["backward"] is backward_before
