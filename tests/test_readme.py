"""README's Python example runs as printed, on a tiny random Llama written as a GGUF file (the only edits: that
file for the real model's name, a few rows and steps, and a temporary folder), and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

from minipeft.workshop.llm.tiny import write_tiny_llama

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, keep_rng):
    (code,) = python_blocks()
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    small = (code.replace('load_pretrained("smollm2-135m-instruct")', f"load_pretrained({str(tiny)!r}, progress=False)")
             .replace('make_splits("dialogsum", 400, 0, 12, seed=0)', 'make_splits("dialogsum", 8, 0, 2, seed=0)')
             .replace("steps=60, batch_size=4", "steps=2, batch_size=4, progress=False")
             .replace('"my_adapter"', repr(str(tmp_path / "my_adapter"))))
    assert small.count("tiny.gguf") == 2 and "steps=2" in small and str(tmp_path / "my_adapter") in small   # edits
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    scope: dict = {}
    exec(compile(small, "README.md", "exec"), scope)
    assert "trainable params:" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "my_adapter").iterdir()}
    loaded, merged = scope["loaded"], scope["merged"]
    assert not loaded.training and type(merged).__name__ == "LlamaForCausalLM"   # "frozen, eval"; "a plain Llama"
    assert set(scope["scores"]) and len(scope["predictions"]) == 2
