"""Checkpoints: bit-exact round trips, safetensors only, atomic writes, and errors that say what to do."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

import minipeft
from minipeft import backend
from minipeft.io_utils import HOST_ID
from minipeft.nn import GPT, GPTConfig
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.checkpoint import CheckpointError, load_checkpoint, load_into, read_metadata, save_checkpoint


def _model(seed: int = 0, **overrides) -> GPT:
    minipeft.manual_seed(seed)
    return GPT(GPTConfig.from_preset("test", **overrides))


def _state(model) -> dict[str, bytes]:
    return {n: backend.to_numpy(p.data).tobytes() for n, p in model.named_parameters()}


@pytest.fixture
def saved(tmp_path, keep_rng):
    model = _model(bias=False)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, extra_metadata={"step": "123", "note": {"lr": 0.01}})
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert _state(loaded) == _state(model)
    x = np.arange(10).reshape(1, 10)
    assert np.array_equal(loaded(x)[0].numpy(), model(x)[0].numpy())


def test_round_trip_float64_keeps_dtype(tmp_path, keep_rng, float64):
    model = _model().to(np.float64)
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert all(p.dtype == np.float64 for p in loaded.parameters())
    assert _state(loaded) == _state(model)


def test_load_into_existing_model(saved, keep_rng):
    model, path = saved
    other = _model(seed=1, bias=False)
    assert _state(other) != _state(model)
    missing, unexpected = load_into(other, path)
    assert (missing, unexpected) == ([], [])
    assert _state(other) == _state(model)


def test_loading_does_not_disturb_the_global_generator(saved):
    _, path = saved
    minipeft.manual_seed(5)
    a = backend.rng().random(3)
    minipeft.manual_seed(5)
    load_checkpoint(path)
    assert np.array_equal(backend.to_numpy(backend.rng().random(3)), backend.to_numpy(a))


def test_file_is_plain_safetensors_with_metadata_and_no_pickle(saved):
    model, path = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])  # a JSON header, then raw tensor bytes and nothing else
    meta = header.pop("__metadata__")
    assert len(raw) == 8 + n + sum(p.data.nbytes for p in model.parameters())
    assert set(header) == {name for name, _ in model.named_parameters()}
    assert meta["format"] == "minipeft" and meta["model_class"] == "GPT"
    assert json.loads(meta["config"]) == model.config.to_dict()
    assert meta["step"] == "123" and json.loads(meta["note"]) == {"lr": 0.01}
    assert read_metadata(path) == meta


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file_gives_a_clear_error(saved, keep):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=rf"{path.name} is not a valid safetensors file .*truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("data", [b"", b"\x00" * 3, np.random.default_rng(0).bytes(4096), b"PK\x03\x04 a zip"])
def test_garbage_bytes_give_a_clear_error(tmp_path, data):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="junk.safetensors is not a valid safetensors file"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.safetensors does not exist.*save_checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError):
        load_checkpoint(tmp_path)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="not a minipeft checkpoint"):
        load_checkpoint(path)


def test_config_mismatch_names_the_differing_field(saved, keep_rng):
    _, path = saved
    wider = _model(bias=False, d_model=32)
    before = _state(wider)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*d_model: checkpoint 16 vs model 32.*load_checkpoint"):
        load_into(wider, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(wider, path, strict=False)  # strict=False forgives missing names, never shapes
    assert _state(wider) == before  # nothing half-loaded


def test_missing_keys_strict_and_not_strict(saved, keep_rng):
    _, path = saved
    with_bias = _model(bias=True)  # has bias parameters the checkpoint lacks
    with pytest.raises(CheckpointError, match=r"missing \['blocks.0.ln_1.bias'"):
        load_into(with_bias, path)
    missing, unexpected = load_into(with_bias, path, strict=False)
    assert "blocks.0.attn.q_proj.bias" in missing and unexpected == []


def test_failed_write_leaves_old_file_intact_and_no_temp_file(saved, monkeypatch):
    model, path = saved
    old = path.read_bytes()

    def broken_fsync(fd):  # the temp file holds the new bytes, then the disk fails before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_model(seed=3, bias=False), path)
    assert path.read_bytes() == old
    assert os.listdir(path.parent) == [path.name]


def test_save_rejects_reserved_metadata_keys(tmp_path, keep_rng):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(_model(), tmp_path / "m.safetensors", extra_metadata={"format": "x"})
    assert not (tmp_path / "m.safetensors").exists()


def _flip_a_tensor_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[header + 17] ^= 0x01                                    # one bit of the first tensor; the size is the same
    path.write_bytes(bytes(raw))


def test_flipped_tensor_bytes_fail_the_stored_checksum(saved):
    model, path = saved
    assert len(read_metadata(path)["tensors_sha256"]) == 64
    _flip_a_tensor_byte(path)
    for load in (lambda: load_checkpoint(path), lambda: load_into(model, path)):
        with pytest.raises(CheckpointError, match=f"{path.name}: the tensor data does not match the checksum"):
            load()


def test_a_file_without_a_checksum_still_loads(saved):
    # as written by an older minipeft (or another tool): same metadata, no tensors_sha256
    model, path = saved
    meta = read_metadata(path)
    del meta["tensors_sha256"]
    save_file({n: backend.to_numpy(p.data) for n, p in model.named_parameters()}, str(path), metadata=meta)
    assert _state(load_checkpoint(path)) == _state(model)
    _flip_a_tensor_byte(path)
    load_checkpoint(path)                                       # unchecked: nothing to compare against


def test_temp_files_of_a_killed_save_are_removed_by_the_next_load_or_save(saved):
    model, path = saved
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = path.parent / f".{path.name}.{HOST_ID}.{dead.pid}.0123abcd.tmp"
    for action in (lambda: load_checkpoint(path), lambda: save_checkpoint(model, path)):
        stale.write_bytes(b"half a checkpoint")
        action()
        assert os.listdir(path.parent) == [path.name]


def test_a_peft_model_is_pointed_to_save_pretrained_and_merge_and_unload(tmp_path, keep_rng):
    peft = get_peft_model(_model(), LoraConfig(r=2))
    with pytest.raises(TypeError, match=r"save_pretrained\(directory\).*merge_and_unload\(\)"):
        save_checkpoint(peft, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
