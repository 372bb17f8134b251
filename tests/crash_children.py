"""The saving side of tests/test_crash_safety.py: forks a child that saves in a loop, for the test to SIGKILL.

python tests/crash_children.py adapter DIR      alternate two LoRA adapters (r=2, alpha 4 / r=4, alpha 16) into DIR
python tests/crash_children.py adapter_record DIR  the same, each with a record file (extra_files) naming its r
python tests/crash_children.py checkpoint FILE  save a GPT checkpoint (~0.5 MB) to FILE

It imports and builds once, saves once (so a whole save is on disk), then for every line read on stdin
forks a child that saves over and over, prints the child's pid, waits for it to die (the test kills it),
reaps it and prints "reaped". Forking skips the interpreter's start, so a kill costs milliseconds.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from lora_helpers import build_gpt

from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.checkpoint import save_checkpoint

MAX_LIFE_S = 5.0  # a child nobody kills (the test failed) stops by itself


def main(kind: str, target: str) -> None:
    if kind in ("adapter", "adapter_record"):
        models = [get_peft_model(build_gpt(0), LoraConfig(r=r, lora_alpha=a, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False)) for r, a in ((2, 4), (4, 16))]
        records = [{"record.json": f'{{"r": {m.peft_config["default"].r}}}'.encode()} if kind == "adapter_record"
                   else None for m in models]
        saves = [lambda m=m, x=x: m.save_pretrained(target, extra_files=x)
                 for m, x in zip(models, records, strict=True)]
    elif kind == "checkpoint":
        model = build_gpt(0, d_model=96, d_ff=384)
        saves = [lambda: save_checkpoint(model, target)]
    else:
        raise SystemExit(f"unknown kind {kind!r}; use 'adapter', 'adapter_record' or 'checkpoint'")
    saves[0]()
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            end = time.monotonic() + MAX_LIFE_S
            for save in itertools.cycle(saves):
                save()
                if time.monotonic() > end:
                    os._exit(1)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
