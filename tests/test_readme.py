"""README's Python example runs as printed, on the tiny base model (the only edits: quick=True, a few rows and steps,
and a temporary folder), and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, keep_rng):
    (code,) = python_blocks()
    small = (code.replace("load_base_model()", "load_base_model(quick=True, progress=False)")
             .replace('make_splits("dialogsum", 2000, 0, 30, seed=0)', 'make_splits("dialogsum", 16, 0, 2, seed=0)')
             .replace("steps=150, batch_size=16", "steps=2, batch_size=8, progress=False")
             .replace("max_new_tokens=48", "max_new_tokens=4")
             .replace('"my_adapter"', repr(str(tmp_path / "my_adapter"))))
    assert small.count("quick=True") == 2 and "steps=2" in small and str(tmp_path) in small   # every edit applied
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    assert "trainable params:" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "my_adapter").iterdir()}
    loaded, merged = scope["loaded"], scope["merged"]
    assert not loaded.training and type(merged).__name__ == "GPT"      # "frozen, in eval mode"; "a plain GPT"
    assert set(scope["scores"]) and len(scope["predictions"]) == 2
