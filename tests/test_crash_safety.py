"""Nothing torn by a crash: a process saving in a loop is killed with SIGKILL, then the files are read.

tests/crash_children.py forks the saving process; each test kills a few dozen of them at random moments
in a couple of seconds. Set MINIPEFT_CRASH_KILLS=500 for a longer run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lora_helpers import build_gpt, seeded

from minipeft.peft import PeftModel
from minipeft.workshop.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a saving process to SIGKILL")
TESTS = Path(__file__).parent
KILLS = int(os.environ.get("MINIPEFT_CRASH_KILLS", "30"))


@contextlib.contextmanager
def saver(kind: str, target: Path):
    """A function kill(delay) that lets a fresh process save `kind` to `target` for `delay` s, then SIGKILLs it."""
    env = {k: v for k, v in os.environ.items() if k != "MINIPEFT_DEVICE"}   # NumPy: a forked CUDA context breaks
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])   # this checkout's minipeft
    server = subprocess.Popen([sys.executable, str(TESTS / "crash_children.py"), kind, str(target)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=TESTS)

    def kill(delay: float) -> None:
        server.stdin.write("go\n")
        server.stdin.flush()
        pid = int(server.stdout.readline())
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        assert server.stdout.readline().strip() == "reaped"   # its pid no longer runs

    try:
        yield kill
    finally:
        server.kill()
        server.wait()


def hidden(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_an_adapter_folder_killed_mid_save_always_loads_one_whole_save(tmp_path):
    # the saver alternates r=2 (alpha 4) and r=4 (alpha 16); a mix of the two cannot load (shapes differ)
    folder, interrupted, delays = tmp_path / "adapter", 0, np.random.default_rng(0).uniform(0, 0.03, KILLS)
    with saver("adapter", folder) as kill:
        for delay in delays:
            kill(delay)
            interrupted += bool(hidden(folder))
            with seeded(0):
                loaded = PeftModel.from_pretrained(build_gpt(0), str(folder))
            cfg = loaded.peft_config["default"]
            assert (cfg.r, cfg.lora_alpha) in ((2, 4), (4, 16))
            assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert interrupted > 0, "no kill landed inside a save: the test proved nothing"
    print(f"{KILLS} kills, {interrupted} of them mid-save, 0 torn folders")


def test_a_record_saved_with_the_adapter_always_matches_it_after_a_kill(tmp_path):
    """extra_files join the adapter's unit: a kill never leaves a new adapter beside an old record (the CLI's
    minipeft_run.json says which base to load an adapter on)."""
    folder, interrupted, delays = tmp_path / "adapter", 0, np.random.default_rng(2).uniform(0, 0.03, KILLS)
    with saver("adapter_record", folder) as kill:
        for delay in delays:
            kill(delay)
            interrupted += bool(hidden(folder))
            with seeded(0):
                loaded = PeftModel.from_pretrained(build_gpt(0), str(folder))   # finishes a committed save first
            assert json.loads((folder / "record.json").read_text())["r"] == loaded.peft_config["default"].r
            assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors", "record.json"]
    assert interrupted > 0, "no kill landed inside a save: the test proved nothing"


def test_a_checkpoint_killed_mid_save_loads_and_its_temp_files_are_removed(tmp_path):
    path, left, delays = tmp_path / "model.safetensors", 0, np.random.default_rng(1).uniform(0, 0.03, KILLS)
    with saver("checkpoint", path) as kill:
        for delay in delays:
            kill(delay)
            left += len(hidden(tmp_path))
            load_checkpoint(path)                             # whole (the checksum is checked), and cleans up
            assert os.listdir(tmp_path) == [path.name]
    assert left > 0, "no kill landed inside a save: the test proved nothing"
    print(f"{KILLS} kills, {left} temp files left by them, all removed by the next load")
