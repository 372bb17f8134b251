"""`SparseLayer`: a base module whose chosen entries are replaced, per adapter, by trained values.

Per adapter and per selected parameter it holds `values` (k,), a Parameter, and `indices` (k,), fixed int32
flat positions. The forward runs the module's own op on W' = W0 with W'.flat[indices] = values
(`sparse_replace`). The pair (indices, values) is the sparse diff the adapter file stores; `apply_sparse_diff`
writes it into a tensor and returns what it overwrote, `remove_sparse_diff` puts that back, both exact.
"""

from __future__ import annotations

import numpy as np

from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.nn.module import Parameter
from minipeft.peft.tuners.sparse.config import MAX_ENTRIES
from minipeft.peft.tuners.sparse.op import sparse_replace
from minipeft.peft.tuners.substitution import SubstitutionLayer


def check_indices(indices, k: int, size: int, what: str) -> np.ndarray:
    """Host int32 indices: 1-D, k of them, strictly increasing (so distinct), inside [0, size); else a clear error."""
    a = np.asarray(indices)
    if a.ndim != 1 or a.shape[0] != k or a.dtype.kind not in "iu":
        raise ValueError(f"{what}: indices must be {k} integers (a 1-D array), got dtype {a.dtype}, shape {a.shape}")
    if size > MAX_ENTRIES:
        raise ValueError(f"{what}: a tensor of {size} entries is too large for int32 indices")
    if k and (int(a[0]) < 0 or int(a[-1]) >= size or bool((np.diff(a.astype(np.int64)) <= 0).any())):
        raise ValueError(f"{what}: indices must be strictly increasing and inside [0, {size}); got first {int(a[0])}, "
                         f"last {int(a[-1])}. Was the file written before its entries were chosen, or edited?")
    return a.astype(np.int32)


def apply_sparse_diff(W, indices, values):
    """W.flat[indices] = values, in place; returns the entries it overwrote (for remove_sparse_diff)."""
    flat = W.reshape(-1)
    originals = flat[indices].copy()
    flat[indices] = values
    return originals


def remove_sparse_diff(W, indices, originals) -> None:
    """Undo apply_sparse_diff: W.flat[indices] = originals, exactly."""
    W.reshape(-1)[indices] = originals


class SparseLayer(SubstitutionLayer):
    """Per adapter, trained values at fixed indices of selected parameters: `sparse_weight.<adapter>` (k,), ..."""

    adapter_layer_names = ("sparse_weight", "sparse_bias")   # the values, by adapter
    other_param_names = ("sparse_indices",)                   # adapter -> {pname: int32 (k,) indices, or None}

    def values(self, name: str, pname: str) -> Parameter:
        return getattr(self, f"sparse_{pname}")[name]

    def substitute(self, name: str, pname: str) -> Tensor:
        return sparse_replace(getattr(self.base_layer, pname), self.values(name, pname), self.indices(name, pname))

    def indices(self, name: str, pname: str):
        """Adapter `name`'s fixed positions in parameter `pname`; a clear error if they were never chosen."""
        idx = self.sparse_indices[name][pname]
        if idx is None:
            raise ValueError(f"sparse adapter {name!r}: the entries of {type(self.base_layer).__name__}.{pname} were "
                             "never chosen (a SparseConfig with entries but no selection); load the adapter with "
                             "PeftModel.from_pretrained, or choose them with select_sparse_entries(base, config, "
                             "batches)")
        return idx

    def create_adapter(self, adapter_name: str, config, counts: dict[str, int],
                       indices: dict[str, object] | None = None) -> None:
        """counts[pname] entries per parameter; with indices the values start as the base's own entries there.

        Without indices (an adapter rebuilt from its config, before its file is read) the values are zeros
        and the forward refuses to run until set_indices() gives the positions.
        """
        self.sparse_indices[adapter_name] = {}
        for pname, k in counts.items():
            W0 = getattr(self.base_layer, pname).data
            getattr(self, f"sparse_{pname}")[adapter_name] = Parameter(backend.xp().zeros(k, dtype=W0.dtype))
            self.sparse_indices[adapter_name][pname] = None
            if indices is not None:
                self.set_indices(adapter_name, pname, indices[pname])

    def checked_indices(self, name: str, pname: str, indices) -> np.ndarray:
        """`indices` as host int32, checked to fit adapter `name`'s values in parameter `pname`."""
        host = indices if isinstance(indices, np.ndarray) else backend.to_numpy(indices)
        return check_indices(host, self.values(name, pname).shape[0], getattr(self.base_layer, pname).size,
                             f"sparse adapter {name!r}, {type(self.base_layer).__name__}.{pname}")

    def set_indices(self, name: str, pname: str, indices, take_base_values: bool = True) -> None:
        """Fix adapter `name`'s positions in parameter `pname`; by default its values become the base's entries
        there (so the adapter starts as the identity); a load keeps the values it read."""
        idx = backend.asarray(self.checked_indices(name, pname, indices))
        self.sparse_indices[name][pname] = idx
        if take_base_values:
            self.values(name, pname).data = getattr(self.base_layer, pname).data.reshape(-1)[idx].copy()

    def merge_into_base(self, name: str) -> None:
        """Apply the adapter's sparse diff to the base parameters (the overwritten entries kept, for unmerge)."""
        chosen = {pname: self.indices(name, pname) for pname in self.trains(name)}  # all, before any write
        for pname, idx in chosen.items():
            W = getattr(self.base_layer, pname).data
            self._merged_originals[pname] = (idx, apply_sparse_diff(W, idx, self.values(name, pname).data))

    def unmerge_from_base(self) -> None:
        """Remove the merged sparse diff: the overwritten entries back, bit for bit."""
        for pname, (idx, originals) in self._merged_originals.items():
            remove_sparse_diff(getattr(self.base_layer, pname).data, idx, originals)
        self._merged_originals.clear()

    def extra_repr(self) -> str:
        counts = {n: {p: self.values(n, p).shape[0] for p in ps} for n, ps in self.sparse_indices.items()}
        return f"{type(self.base_layer).__name__}, entries={counts}"
