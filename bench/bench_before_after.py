"""Benchmark: the training step of this checkout against an earlier commit, in one run.

For a code change that must not slow training (e.g. moving the fast paths beside readable reference ops),
the two versions are timed alternately, A B A B, each round in a fresh process per version (so neither
inherits the other's imports or allocator state), and the result is the median of the per-round ratios
new / old (BENCHMARKS.md, "Machines": the machine's speed drifts, so only ratios within one run mean much).
The earlier commit is checked out into a temporary git worktree, removed afterwards.

Each process times full fine-tuning and LoRA q,v steps of the tutorial's base model ("mini", batch 8 x 256,
a target at every position; the median of --steps steps after one warm-up step).

    python bench/bench_before_after.py --rev 9247031             # ~2 min on 2 cores (100 s on an AMD EPYC, 2026-12-01)
    python bench/bench_before_after.py --rev HEAD~3 --quick      # seconds, the test preset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

# Run in each version's process. It only uses API both versions have, picking the loss the trainer uses.
CHILD = r"""
import json, sys, time
# the tree on PYTHONPATH only: an editable install's finder would fill in modules the older tree lacks
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
import numpy as np
import minipeft as mp
from minipeft.nn import GPT, GPTConfig
from minipeft.optim import AdamW
from minipeft.peft import LoraConfig, get_peft_model
getattr(mp, "tune_allocator", lambda: None)()   # newer versions: opt-in; older ones did it at import
try:
    from minipeft.loss import causal_lm_loss
except ImportError:
    def causal_lm_loss(model, x, y):
        return model(x, y, return_logits=False)[1]
quick, steps = sys.argv[1] == "1", int(sys.argv[2])
assert mp.__file__.startswith(sys.argv[3]), f"imported {mp.__file__}, not the tree under test {sys.argv[3]}"
preset, over, (B, T) = ("test", {"context_length": 64}, (4, 64)) if quick else ("mini", {}, (8, 256))
rng = np.random.default_rng(0)
cfg = GPTConfig.from_preset(preset, **over)
x, y = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
out = {}
for variant in ("full", "lora q,v"):
    mp.manual_seed(0)
    model = GPT(cfg)
    if variant != "full":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    opt = AdamW(model.parameters(trainable_only=True), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = causal_lm_loss(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t)
    out[variant] = 1000 * float(np.median(times))
print(json.dumps(out))
"""


def run(tree: str, quick: bool, steps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    res = subprocess.run([sys.executable, "-c", CHILD, "1" if quick else "0", str(steps), tree], cwd=tree, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"the timing process in {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the earlier commit to compare against")
    p.add_argument("--rounds", type=int, default=8, help="A/B rounds (one process per version per round)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per process")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    sha = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=here, capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old")
        subprocess.run(["git", "worktree", "add", "--detach", old, sha], cwd=here, check=True, capture_output=True)
        try:
            ratios: dict[str, list[float]] = {}
            new_ms: dict[str, list[float]] = {}
            for i in range(rounds):
                order = [("old", old), ("new", here)] if i % 2 == 0 else [("new", here), ("old", old)]
                got = {name: run(tree, args.quick, steps) for name, tree in order}
                for v in got["new"]:
                    ratios.setdefault(v, []).append(got["new"][v] / got["old"][v])
                    new_ms.setdefault(v, []).append(got["new"][v])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old], cwd=here, check=False, capture_output=True)
    print(f"this checkout vs {sha}: {rounds} alternated rounds, median of {steps} steps each")
    print(f"{'variant':<12}{'new ms/step':>12}{'new / old (median of rounds)':>31}{'min':>8}{'max':>8}")
    for v, r in ratios.items():
        print(f"{v:<12}{np.median(new_ms[v]):>12.1f}{np.median(r):>31.3f}{min(r):>8.3f}{max(r):>8.3f}")


if __name__ == "__main__":
    main()
