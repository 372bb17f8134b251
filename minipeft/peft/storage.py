"""What one task costs on disk: an adapter's bytes, measured from the files save_pretrained writes and
predicted from the shapes of what it saves.

The prediction is the raw tensor payload, size x itemsize of every array in adapter_model.safetensors
(safetensors stores arrays unpadded): LoRA's A and B, a selective method's copies, a sparse diff's values
(4 bytes each in float32) and int32 indices (4 more). The measured size adds the file's JSON header (one
entry per tensor) and adapter_config.json, so for small adapters the two differ by a few kilobytes.
"""

from __future__ import annotations

import os
import tempfile

from minipeft.peft.save_load import adapter_dir


def adapter_tensor_bytes(peft_model, adapter_name: str = "default") -> int:
    """Predicted: bytes of the arrays adapter `adapter_name` stores, sum of size x itemsize from their shapes."""
    arrays = peft_model.base_model.adapter_file_arrays(adapter_name)
    return sum(int(a.size) * int(a.dtype.itemsize) for a in arrays.values())


def adapter_file_bytes(peft_model, adapter_name: str = "default") -> int:
    """Measured: bytes on disk of adapter `adapter_name`'s folder as save_pretrained writes it (both files)."""
    with tempfile.TemporaryDirectory() as d:
        peft_model.save_pretrained(d, selected_adapters=[adapter_name])
        folder = adapter_dir(d, adapter_name)
        return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
