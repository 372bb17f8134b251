"""A method is one folder: adding tests/example_method.py as minipeft/peft/tuners/example_parallel/ to a copy of the
package, and changing nothing else, makes it a method like those that ship: exported by minipeft.peft, trained,
saved and loaded through get_peft_model and PeftModel, run through the whole tuner contract with the case it
declares, and listed by the comparison with the recipe it declares. The example also keeps CONTRIBUTING's dtype
rule on a 4-bit base, and CONTRIBUTING names only files of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

CHECK = r"""
import sys, numpy as np
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]   # this copy only
import minipeft
assert minipeft.__file__.startswith(sys.argv[1]), minipeft.__file__
from minipeft.peft import ParallelAdapterConfig, ParallelAdapterLayer, PeftModel, get_peft_model
from minipeft.peft.registry import PEFT_TYPE_TO_CONTRACT
from minipeft.peft.tuners import METHOD_PACKAGES
from minipeft.nn import GPT, GPTConfig
from minipeft.workshop.compare import METHOD_RECIPES, BuildContext

assert "example_parallel" in METHOD_PACKAGES
base = lambda: GPT(GPTConfig.from_preset("test"))
case = PEFT_TYPE_TO_CONTRACT["EXAMPLE_PARALLEL"]["gpt"]
minipeft.manual_seed(0)
peft = get_peft_model(base(), case.config(base(), []))
assert peft.get_nb_trainable_parameters()[0] == case.trainable(base()) > 0
assert any(isinstance(m, ParallelAdapterLayer) for _, m in peft.named_modules())
for p in peft.base_model.adapter_parameters("default").values():
    p.data = np.random.default_rng(0).normal(0, 0.3, p.shape).astype(p.dtype)
ids = np.random.default_rng(1).integers(0, 64, (2, 8))
out = minipeft.to_numpy(peft(ids)[0].data)
try:
    peft.merge_adapter()
    raise SystemExit("merge_adapter() did not refuse a non-mergeable method")
except TypeError as e:
    assert "EXAMPLE_PARALLEL adapters cannot be merged" in str(e), e
peft.save_pretrained(sys.argv[2])
minipeft.manual_seed(0)
loaded = PeftModel.from_pretrained(base(), sys.argv[2])
assert np.array_equal(minipeft.to_numpy(loaded(ids)[0].data), out)
recipe = METHOD_RECIPES["parallel"]
assert list(METHOD_RECIPES)[-1] == "parallel" and recipe.label == "parallel adapter m=8"
assert isinstance(recipe.make(base(), BuildContext(batches=lambda n: [])), PeftModel)
print("ok")
"""


def _copy(tmp_path: Path, with_folder: bool) -> Path:
    """The repository's package and tests copied under tmp_path, with the example as a method folder if asked."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "minipeft", root / "minipeft", ignore=IGNORE)
    shutil.copytree(REPO / "tests", root / "tests", ignore=IGNORE)
    shutil.copy(REPO / "pyproject.toml", root)
    if with_folder:
        folder = root / "minipeft" / "peft" / "tuners" / "example_parallel"
        folder.mkdir()
        shutil.copy(REPO / "tests" / "example_method.py", folder / "__init__.py")
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "MINIPEFT_HOME": str(root / "home")}
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_method_folder_is_all_a_new_method_needs(tmp_path):
    root = _copy(tmp_path, with_folder=True)
    r = _run(root, "-c", CHECK, str(root / "minipeft"), str(tmp_path / "adapter"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    # the whole contract, with the case the folder declares (test_tuner_contract finds the method already registered)
    r = _run(root, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_tuner_contract.py",
             "-k", "EXAMPLE_PARALLEL")
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_without_the_folder_the_method_is_unknown(tmp_path):
    """The check above can fail: the same copy without the folder has no such method."""
    root = _copy(tmp_path, with_folder=False)
    r = _run(root, "-c", CHECK, str(root / "minipeft"), str(tmp_path / "adapter"))
    assert r.returncode != 0 and "cannot import name 'ParallelAdapterConfig'" in r.stderr


def test_contributing_points_only_at_files_of_the_repository():
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    assert "../" not in text
    paths = re.findall(r"`((?:minipeft|tests|tutorials)/[\w/.]+)`", text)
    missing = [p for p in paths if not (REPO / p).exists() and "example_parallel" not in p]   # made by the test above
    assert len(paths) >= 5 and not missing, missing


def test_the_example_makes_float_adapters_on_a_4bit_base_and_trains_them():
    """CONTRIBUTING's dtype rule: adapter weights in base_dtype (a Linear4bit's compute dtype), not its weight's uint8
    codes, and the base reached through base_layer(x); the example follows it, so it trains on a quantized GPT."""
    import example_method
    from lora_helpers import batch, build_gpt, train_steps

    from minipeft.peft import get_peft_model
    from minipeft.quant import Linear4bit, quantize_model

    base = quantize_model(build_gpt(0))
    peft = get_peft_model(base, example_method.ParallelAdapterConfig(bottleneck=2, target_modules=["fc1"]))
    layers = [m for _, m in peft.named_modules() if isinstance(m, example_method.ParallelAdapterLayer)]
    assert layers and all(isinstance(m.base_layer, Linear4bit) for m in layers)
    assert {p.dtype.name for p in peft.base_model.adapter_parameters("default").values()} == {"float32"}
    losses = train_steps(peft, *batch(1), steps=3)
    assert losses[-1] < losses[0]
