"""Read and write GGUF files (llama.cpp's model format) with `gguf`, ggml's own Python reader.

A GGUF file is a header, a list of metadata key/values (`llama.block_count`, the tokenizer's vocabulary,
...) and named tensors, each stored in one of ggml's types: plain (F32, F16) or block-quantized (Q8_0, Q4_1,
...). `read_gguf` returns the metadata as plain Python values and every tensor dequantized to a NumPy
array; names stay GGUF's own (`token_embd.weight`, `blk.0.attn_q.weight`): mapping them to a model's
names is the model's job.

Shapes: GGUF lists a tensor's dimensions fastest-varying first, the reverse of NumPy's row-major order,
so a linear weight of shape (out, in) is listed as [in, out] in the file. Both functions here speak
NumPy's order: `read_gguf` returns (out, in), `write_gguf` takes (out, in).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minipeft.io_utils import atomic_write

GGUF_MAGIC = b"GGUF"
MAX_NAME_BYTES = 63  # ggml's GGML_MAX_NAME is 64 bytes, the terminating zero included
_HEADER_KEYS = "GGUF."  # the reader's pseudo-fields for the header (version, counts): not metadata


def _gguf():
    """The `gguf` module, or an ImportError that says how to install it."""
    try:
        import gguf  # noqa: PLC0415 (imported where it is used, so its absence gives the message below)
    except ImportError:
        raise ImportError("reading or writing a GGUF file needs the `gguf` package (ggml's reader, pure Python "
                          "and NumPy): pip install gguf") from None
    return gguf


@dataclass
class GGUFFile:
    """What a GGUF file holds: metadata as Python values, tensors as NumPy arrays, each tensor's stored type."""

    metadata: dict[str, object]        # key -> str, int, float, bool, or a list of those
    tensors: dict[str, np.ndarray]     # GGUF name -> dequantized array, NumPy (row-major) shape
    tensor_types: dict[str, str]       # GGUF name -> the ggml type it was stored in: "F32", "Q8_0", "Q4_1", ...


def _open(path: str | os.PathLike):
    """A GGUFReader on `path`, after checking that the file exists and starts with the GGUF magic."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no file"
        raise FileNotFoundError(f"{path}: {what} there, not a GGUF file; pass the path of a .gguf file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}; pass a .gguf "
                         "file (a model saved by llama.cpp or by write_gguf)")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, struct.error) as e:
        raise ValueError(_corrupt(path, e) + f" (a whole file written by a newer llama.cpp may use a type gguf "
                         f"{_version(gguf)} does not know yet: pip install -U gguf)") from None


def _corrupt(path: Path, e: Exception) -> str:
    return (f"{path} is truncated or corrupt ({type(e).__name__}: {e}); the file ends before what its header "
            "announces or holds invalid values: download or write it again")


def _metadata(reader, path: Path) -> dict[str, object]:
    try:
        return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(_HEADER_KEYS)}
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(_corrupt(path, e)) from None


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The metadata of a GGUF file as plain Python values, without reading its tensors."""
    return _metadata(_open(path), Path(path))


def read_gguf(path: str | os.PathLike, dtype: np.dtype | type = np.float32) -> GGUFFile:
    """Read a GGUF file: its metadata, every tensor dequantized to `dtype` in NumPy shape, and their types."""
    gguf = _gguf()
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"read_gguf: dtype must be a float dtype (np.float32 or np.float64), got {dtype}")
    path = Path(path)
    reader = _open(path)
    metadata = _metadata(reader, path)
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims fastest first; NumPy's order is the reverse
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which gguf "
                             f"{_version(gguf)} cannot dequantize; upgrade it (pip install -U gguf) or convert the "
                             "file to a type it reads (F32, F16, Q8_0, Q4_1, ...) with llama.cpp's llama-quantize"
                             ) from None
        except ValueError as e:
            raise ValueError(_corrupt(path, e)) from None
        if values.size != int(np.prod(shape)):
            raise ValueError(_corrupt(path, ValueError(f"tensor {t.name!r} has {values.size} values for shape "
                                                       f"{shape}")))
        tensors[t.name] = np.array(values, dtype=dtype).reshape(shape)  # a copy: nothing points into the file
        types[t.name] = t.tensor_type.name
    return GGUFFile(metadata=metadata, tensors=tensors, tensor_types=types)


def _version(gguf) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("gguf")
    except PackageNotFoundError:
        return getattr(gguf, "__version__", "(version unknown)")


# ---- writing ---------------------------------------------------------------------------------------------------

_INT_TYPES = [  # a Python int takes the first that holds it: llama.cpp stores counts and ids as UINT32
    ("UINT32", 0, 2**32), ("INT32", -(2**31), 2**31), ("INT64", -(2**63), 2**63), ("UINT64", 0, 2**64)]
_ARRAY_INT_TYPES = [("INT32", -(2**31), 2**31), ("INT64", -(2**63), 2**63), ("UINT64", 0, 2**64)]  # token_type: INT32
_NUMPY_SCALARS = {np.uint8: "UINT8", np.int8: "INT8", np.uint16: "UINT16", np.int16: "INT16", np.uint32: "UINT32",
                  np.int32: "INT32", np.uint64: "UINT64", np.int64: "INT64", np.float32: "FLOAT32",
                  np.float64: "FLOAT64", np.bool_: "BOOL"}


def _int_type(key: str, values: list[int], table) -> str:
    lo, hi = min(values), max(values)
    for name, a, b in table:
        if a <= lo and hi < b:
            return name
    raise ValueError(f"write_gguf: metadata {key!r} holds an integer outside 64 bits ({lo if lo < 0 else hi})")


def _value_type(key: str, value) -> tuple[str, object]:
    """(GGUF value type name, value to pack) of one scalar: bool, int, float (FLOAT32, as llama.cpp), str."""
    if isinstance(value, np.generic) and type(value) in _NUMPY_SCALARS:
        return _NUMPY_SCALARS[type(value)], value.item()   # a NumPy scalar keeps its exact type: np.float64(1e-5)
    if isinstance(value, bool):
        return "BOOL", value
    if isinstance(value, int):
        return _int_type(key, [value], _INT_TYPES), value
    if isinstance(value, float):
        return "FLOAT32", value
    if isinstance(value, str):
        return "STRING", value
    raise TypeError(f"write_gguf: metadata {key!r} = {value!r} has type {type(value).__name__}; GGUF holds str, int, "
                    "float, bool and non-empty lists of one of those")


def _array_type(key: str, values: list) -> str:
    if not values:
        raise ValueError(f"write_gguf: metadata {key!r} is an empty list; GGUF arrays name their element type, so "
                         "an empty one cannot be written: leave the key out")
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return "BOOL"
    if kinds == {int}:
        return _int_type(key, values, _ARRAY_INT_TYPES)
    if kinds <= {int, float} and float in kinds:
        return "FLOAT32"
    if kinds == {str}:
        return "STRING"
    raise TypeError(f"write_gguf: metadata {key!r} is a list of {sorted(k.__name__ for k in kinds)}; a GGUF array "
                    "holds one type: all str, all int, all float or all bool")


def _add_metadata(writer, gguf, metadata: dict) -> None:
    T = gguf.GGUFValueType
    for key, value in metadata.items():
        if key == "general.architecture":
            continue  # the writer's constructor writes it
        if not isinstance(key, str) or not key:
            raise TypeError(f"write_gguf: metadata keys must be non-empty str, got {key!r}")
        if isinstance(value, (list, tuple)):
            sub = _array_type(key, list(value))
            items = [float(v) for v in value] if sub == "FLOAT32" else list(value)
            writer.add_key_value(key, items, T.ARRAY, sub_type=T[sub])
        else:
            vtype, v = _value_type(key, value)
            writer.add_key_value(key, v, T[vtype])


def _tensor_data(gguf, name: str, array, type_name: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: float32 as is, or the bytes of a quantized type."""
    qtypes = gguf.GGMLQuantizationType.__members__
    if type_name not in qtypes:
        raise ValueError(f"write_gguf: tensor {name!r}: unknown type {type_name!r}; ggml types are "
                         f"{', '.join(qtypes)} (this writer: F32, F16 and what gguf.quants.quantize implements, e.g. "
                         "Q8_0, Q4_1)")
    qtype = qtypes[type_name]
    a = np.asarray(array)
    if a.dtype.kind not in "fiu" or a.ndim == 0:
        raise ValueError(f"write_gguf: tensor {name!r} must be a numeric array with at least one dimension, got "
                         f"dtype {a.dtype} and shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if type_name in ("F32", "F16"):
        return gguf.quants.quantize(a, qtype), None
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if a.shape[-1] % block:
        raise ValueError(f"write_gguf: tensor {name!r} of shape {a.shape} cannot be stored as {type_name}: its last "
                         f"dimension must be a multiple of the {block}-value block; store it as F32")
    try:
        return gguf.quants.quantize(a, qtype), qtype
    except NotImplementedError:
        raise ValueError(f"write_gguf: tensor {name!r}: gguf {_version(gguf)} cannot quantize to {type_name} (it "
                         "reads that type but does not write it); choose F32, Q8_0 or Q4_1") from None


def write_gguf(path: str | os.PathLike, metadata: dict, tensors: dict[str, np.ndarray],
               tensor_types: dict[str, str] | None = None) -> Path:
    """Write a GGUF file atomically: metadata (must hold general.architecture), tensors as F32 unless typed.

    `tensor_types` maps a tensor name to "F32", "F16", "Q8_0", "Q4_1" (anything gguf.quants.quantize
    implements). Python ints are stored as UINT32 when they fit (else INT32, INT64, UINT64), floats as
    FLOAT32 (llama.cpp's types for hyperparameters), lists of ints as INT32 arrays; a NumPy scalar keeps its
    own type (np.float64(x) for a FLOAT64). Tensors take NumPy shapes: an (out, in) weight is written as
    GGUF's [in, out].
    """
    gguf = _gguf()
    tensor_types = dict(tensor_types or {})
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"write_gguf: metadata['general.architecture'] must name the model family (e.g. 'llama'), "
                         f"got {arch!r}")
    unknown = sorted(set(tensor_types) - set(tensors))
    if unknown:
        raise ValueError(f"write_gguf: tensor_types names tensors that are not in `tensors`: {unknown}")
    prepared = {}
    for name, array in tensors.items():
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"write_gguf: tensor name {name!r} must be a str of 1 to {MAX_NAME_BYTES} bytes (ggml's "
                             "limit)")
        prepared[name] = _tensor_data(gguf, name, array, tensor_types.get(name, "F32"))

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        _add_metadata(writer, gguf, metadata)
        for name, (data, raw_dtype) in prepared.items():
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)
