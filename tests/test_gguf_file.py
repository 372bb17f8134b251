"""GGUF files (minipeft/workshop/llm/gguf_file.py): metadata and tensors round trip, the quantization bounds, the shape
convention, the errors, and the real SmolLM2 file when it is cached."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from llm_files import real_gguf_path

from minipeft.workshop.llm.gguf_file import GGUFFile, read_gguf, read_gguf_metadata, write_gguf

gguf = pytest.importorskip("gguf")

FP16_ROUND = 2.0 ** -11  # float16 keeps 10 mantissa bits: rounding to it moves a value by at most 2^-11 of itself

METADATA = {
    "general.architecture": "llama",
    "llama.block_count": 30,                     # UINT32, as llama.cpp stores counts
    "test.negative": -5,                         # INT32
    "test.big": 2**40,                           # INT64
    "test.float": 0.375,                         # FLOAT32 (exact in float32)
    "test.float64": np.float64(1e-5),            # a NumPy float64 keeps its type: read back exactly
    "test.flag": True,
    "test.text": "héllo, 世界 🙂",
    "test.empty_text": "",
    "tokenizer.ggml.tokens": ["<|endoftext|>", "a", "Ġb"],
    "tokenizer.ggml.token_type": [3, 1, -1],     # INT32 array
    "test.floats": [0.5, -2.0, 1e3],
    "test.flags": [True, False],
}


def _write(tmp_path, tensors, types=None, metadata=None, name="m.gguf"):
    return write_gguf(tmp_path / name, metadata or {"general.architecture": "llama"}, tensors, types)


def _stored_types(path) -> dict[str, list[str]]:
    """The GGUF value types of each key, as ggml's reader sees them."""
    return {k: [t.name for t in f.types] for k, f in gguf.GGUFReader(path).fields.items()}


# ---- round trips -----------------------------------------------------------------------------------------------

def test_metadata_round_trips_values_and_python_types(tmp_path):
    path = _write(tmp_path, {"w": np.zeros((2, 3), np.float32)}, metadata=METADATA)
    got = read_gguf(path).metadata
    assert list(got) == list(METADATA)  # the file keeps the order, and the header's pseudo-fields are not metadata
    for key, want in METADATA.items():
        want = want.item() if isinstance(want, np.generic) else want
        assert got[key] == want and type(got[key]) is type(want), key   # True must not come back as 1
        if isinstance(want, list):
            assert [type(v) for v in got[key]] == [type(v) for v in want], key
    assert read_gguf_metadata(path) == got


def test_metadata_is_stored_in_llama_cpp_types(tmp_path):
    types = _stored_types(_write(tmp_path, {"w": np.zeros(4, np.float32)}, metadata=METADATA))
    assert types["llama.block_count"] == ["UINT32"] and types["test.negative"] == ["INT32"]
    assert types["test.big"] == ["INT64"] and types["test.float"] == ["FLOAT32"]
    assert types["test.float64"] == ["FLOAT64"]
    assert types["tokenizer.ggml.token_type"] == ["ARRAY", "INT32"]
    assert types["tokenizer.ggml.tokens"] == ["ARRAY", "STRING"] and types["test.floats"] == ["ARRAY", "FLOAT32"]


def test_a_python_float_is_stored_as_float32(tmp_path):
    # rms_norm_eps = 1e-5 is not a float32: the file keeps float32's nearest value, as llama.cpp's files do
    md = read_gguf(_write(tmp_path, {"w": np.zeros(1, np.float32)},
                          metadata={"general.architecture": "llama", "eps": 1e-5})).metadata
    assert md["eps"] == float(np.float32(1e-5)) != 1e-5


def test_f32_tensors_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal(7).astype(np.float32), "b": rng.standard_normal((5, 3)).astype(np.float32),
               "c": rng.standard_normal((2, 3, 4)).astype(np.float32), "d": np.float32([[np.inf, -0.0, 1e-40]])}
    f = read_gguf(_write(tmp_path, tensors))
    assert isinstance(f, GGUFFile) and list(f.tensors) == list(tensors)
    for name, want in tensors.items():
        got = f.tensors[name]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), name   # bit for bit: -0.0 and the float32 subnormal included
        assert f.tensor_types[name] == "F32"
    f64 = read_gguf(tmp_path / "m.gguf", dtype=np.float64)
    assert f64.tensors["b"].dtype == np.float64 and np.array_equal(f64.tensors["b"], tensors["b"])


def test_tensors_are_copies_not_views_of_the_file(tmp_path):
    # a view into the memory-mapped file would change when the file is rewritten in place
    x = np.arange(64, dtype=np.float32)
    path = _write(tmp_path, {"x": x})
    got = read_gguf(path).tensors["x"]
    path.write_bytes(_write(tmp_path, {"x": -x}, name="other.gguf").read_bytes())   # same inode, new bytes
    assert np.array_equal(got, x) and got.flags.writeable


def test_float64_input_is_written_as_float32(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 8))
    got = read_gguf(_write(tmp_path, {"x": x})).tensors["x"]
    assert np.array_equal(got, x.astype(np.float32))


def test_shape_convention_numpy_order_outside_gguf_order_inside(tmp_path):
    w = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)      # (out=3, in=64), a linear weight
    path = _write(tmp_path, {"blk.0.attn_q.weight": w})
    (info,) = gguf.GGUFReader(path).tensors
    assert [int(n) for n in info.shape] == [64, 3]              # GGUF lists the fastest dimension first
    got = read_gguf(path).tensors["blk.0.attn_q.weight"]
    assert got.shape == (3, 64) and got[2, 5] == w[2, 5] == 2 * 64 + 5


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 32)  # Q8_0 and Q4_1 quantize runs of 32 consecutive values of a row


def test_q8_0_round_trip_within_half_a_step(tmp_path):
    # Q8_0: per block d = max|x| / 127, q = round(x / d) in int8, stored d in float16, value = q * fp16(d).
    # |x - q fp16(d)| <= |x - q d| + |q| |d - fp16(d)| <= d/2 + 127 * 2^-11 d
    x = np.random.default_rng(2).standard_normal((4, 96)).astype(np.float32) * np.float32([[0.01], [1], [30], [1e3]])
    f = read_gguf(_write(tmp_path, {"x": x}, {"x": "Q8_0"}))
    assert f.tensor_types["x"] == "Q8_0"
    d = np.abs(_blocks(x)).max(axis=1, keepdims=True) / 127
    err = np.abs(_blocks(f.tensors["x"]) - _blocks(x))
    assert np.all(err <= d * (0.5 + 127 * FP16_ROUND) * (1 + 1e-6))   # 1e-6: float32 arithmetic in the divisions
    assert np.any(err > 0.25 * d)  # it was really quantized, not stored exactly


def test_q4_1_round_trip_within_half_a_step(tmp_path):
    # Q4_1: per block m = min, d = (max - min) / 15, q = round((x - m) / d) in 0..15, d and m in float16,
    # value = q fp16(d) + fp16(m):  |error| <= d/2 + 15 |d - fp16(d)| + |m - fp16(m)| <= d/2 + 2^-11 (15 d + |m|)
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32) * np.float32([[0.02], [1], [50]]) + 0.3
    f = read_gguf(_write(tmp_path, {"x": x}, {"x": "Q4_1"}))
    assert f.tensor_types["x"] == "Q4_1"
    b = _blocks(x)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / 15
    err = np.abs(_blocks(f.tensors["x"]) - b)
    assert np.all(err <= (d / 2 + FP16_ROUND * (15 * d + np.abs(lo))) * (1 + 1e-6))
    assert np.any(err > 0.25 * d)


def test_f16_round_trip_within_float16_rounding(tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 5)).astype(np.float32)
    f = read_gguf(_write(tmp_path, {"x": x}, {"x": "F16"}))
    assert f.tensor_types["x"] == "F16"
    assert np.all(np.abs(f.tensors["x"] - x) <= FP16_ROUND * np.abs(x)) and not np.array_equal(f.tensors["x"], x)


# ---- errors ----------------------------------------------------------------------------------------------------

def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf: no file there.*pass the path of a \.gguf file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="a folder there"):
        read_gguf_metadata(tmp_path)


@pytest.mark.parametrize("data", [b"", b"GG", b"PK\x03\x04 a zip file", b'{"model": "json"}'])
def test_a_file_without_the_magic_is_not_gguf(tmp_path, data):
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file: it starts with .*not b'GGUF'"):
        read_gguf(path)


def test_every_truncation_is_reported_as_truncated(tmp_path):
    path = _write(tmp_path, {"a": np.ones((2, 64), np.float32), "b": np.ones((2, 64), np.float32)}, {"b": "Q8_0"},
                  metadata=METADATA)
    data = path.read_bytes()
    last = gguf.GGUFReader(path).tensors[-1]
    end = int(last.data_offset) + int(last.n_bytes)   # past this only alignment padding follows
    cut = tmp_path / "cut.gguf"
    for n in range(4, end, 11):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"cut\.gguf is truncated or corrupt .*download or write it again"):
            read_gguf(cut)


def test_a_type_gguf_cannot_dequantize_is_named(tmp_path):
    # Q8_1 is a ggml type gguf has no dequantizer for (ggml uses it only for activations)
    path = tmp_path / "q8_1.gguf"
    w = gguf.GGUFWriter(path, "llama")
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((2, block_bytes), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert read_gguf_metadata(path) == {"general.architecture": "llama"}   # the metadata alone still reads
    with pytest.raises(ValueError, match=r"tensor 'blk\.0\.ffn_up\.weight' is stored as Q8_1, which gguf .* cannot "
                                         r"dequantize; upgrade it \(pip install -U gguf\)"):
        read_gguf(path)


def test_missing_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    path = _write(tmp_path, {"w": np.zeros(2, np.float32)})
    monkeypatch.setitem(sys.modules, "gguf", None)   # `import gguf` now raises ImportError
    with pytest.raises(ImportError, match="needs the `gguf` package .*pip install gguf"):
        read_gguf(path)
    with pytest.raises(ImportError, match="pip install gguf"):
        write_gguf(tmp_path / "other.gguf", {"general.architecture": "llama"}, {})


def test_read_refuses_a_non_float_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype must be a float dtype"):
        read_gguf(_write(tmp_path, {"w": np.zeros(2, np.float32)}), dtype=np.int32)


@pytest.mark.parametrize("metadata, tensors, types, match", [
    ({}, {"w": np.zeros(32)}, None, r"general\.architecture'\] must name the model family"),
    ({"general.architecture": "llama"}, {"w": np.zeros(32)}, {"w": "Q9_9"}, "unknown type 'Q9_9'"),
    ({"general.architecture": "llama"}, {"w": np.zeros((2, 48))}, {"w": "Q8_0"},
     r"shape \(2, 48\) cannot be stored as Q8_0: its last dimension must be a multiple of the 32-value block"),
    ({"general.architecture": "llama"}, {"w": np.zeros((2, 256))}, {"w": "Q4_K"}, "cannot quantize to Q4_K"),
    ({"general.architecture": "llama"}, {"w": np.zeros(32)}, {"v": "Q8_0"}, r"names tensors that are not in .*'v'"),
    ({"general.architecture": "llama"}, {"w": np.float32(1.0)}, None, "at least one dimension"),
    ({"general.architecture": "llama"}, {"w": np.array(["a"])}, None, "must be a numeric array"),
    ({"general.architecture": "llama"}, {"x" * 64: np.zeros(2)}, None, "1 to 63 bytes"),
    ({"general.architecture": "llama", "k": []}, {}, None, "'k' is an empty list"),
    ({"general.architecture": "llama", "k": [1, "a"]}, {}, None, "holds one type"),
    ({"general.architecture": "llama", "k": {"a": 1}}, {}, None, "'k' = .* has type dict"),
    ({"general.architecture": "llama", "k": 2**64}, {}, None, "outside 64 bits"),
])
def test_write_refuses_what_gguf_cannot_hold_and_writes_nothing(tmp_path, metadata, tensors, types, match):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"previous")
    with pytest.raises((ValueError, TypeError), match=match):
        write_gguf(path, metadata, tensors, types)
    assert path.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# ---- the real file ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real() -> GGUFFile:
    return read_gguf(real_gguf_path())


def test_real_file_holds_smollm2_135m(real):
    md, types = real.metadata, real.tensor_types
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 30
    assert (md["llama.embedding_length"], md["llama.feed_forward_length"]) == (576, 1536)
    assert (md["llama.attention.head_count"], md["llama.attention.head_count_kv"]) == (9, 3)
    assert len(md["tokenizer.ggml.tokens"]) == 49152 and all(isinstance(t, str) for t in md["tokenizer.ggml.tokens"])
    assert len(real.tensors) == 272
    counts = {t: list(types.values()).count(t) for t in set(types.values())}
    assert counts == {"Q4_1": 210, "F32": 61, "Q8_0": 1} and types["token_embd.weight"] == "Q8_0"
    assert sum(a.size for a in real.tensors.values()) == 134_515_008
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in real.tensors.values())


def test_real_file_shapes_are_numpy_order(real):
    t = real.tensors
    assert t["token_embd.weight"].shape == (49152, 576)                 # (vocab, d_model)
    assert t["blk.0.attn_q.weight"].shape == (576, 576)
    assert t["blk.0.attn_k.weight"].shape == (192, 576)                 # 3 kv heads x 64: (out, in)
    assert t["blk.0.ffn_up.weight"].shape == (1536, 576) and t["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert t["blk.0.attn_norm.weight"].shape == (576,)
