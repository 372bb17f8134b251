"""Every tutorial runs end to end in --quick mode (tiny model, cached in a temporary MINIPEFT_HOME)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("minipeft_home")


def run_tutorial(path: Path, home: Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("MINIPEFT_HOME", str(home))
    spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])
    return capsys.readouterr().out


def test_there_are_tutorials():
    assert [p.name[:2] for p in TUTORIALS][:5] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_quick(path, home, monkeypatch, capsys, keep_rng):
    out = run_tutorial(path, home, monkeypatch, capsys)
    expected = {
        "01": ["validation loss", "zero-shot scores", "dialogsum", "sentiment"],
        "02": ["4,608", "0.859", "max |merged - unmerged|"],
        "03": ["trainable params:", "LoRA r=8", "full fine-tuning", "ROUGE-L"],
        "04": ["storage for 3 tasks", "reloaded adapters reproduce every prediction exactly: True"],
        "05": ["trainable", "val loss", "best ROUGE-L"],
    }.get(path.name[:2], [])
    for text in expected:
        assert text in out, f"{path.name} --quick did not print {text!r}"
