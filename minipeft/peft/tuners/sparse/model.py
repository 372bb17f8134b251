"""`SparseModel`: sparse fine-tuning on the tuner contract: wrap each module with chosen entries in a
`SparseLayer`; the adapter's fixed indices are saved beside its values in the adapter file."""

from __future__ import annotations

import numpy as np

from minipeft.peft.tuners.base import BaseTuner
from minipeft.peft.tuners.selection import SUPPORTED
from minipeft.peft.tuners.sparse.config import SparseConfig, check_total
from minipeft.peft.tuners.sparse.layer import SparseLayer
from minipeft.peft.tuners.sparse.score import candidate_parameters

INDICES = "_indices"   # a values key on disk + this = its indices key (`...q_proj.sparse_weight_indices`)


class SparseModel(BaseTuner):
    """The user's model with the entries a SparseConfig chose trained as per-adapter sparse diffs."""

    layer_classes = (SparseLayer,)
    target_types = SUPPORTED
    mergeable = True

    def _targets(self, config: SparseConfig) -> dict[str, dict]:
        """Every module holding chosen entries, with their count per parameter (`counts`) and, once chosen, their
        positions (`indices`); the entries are checked against this model's candidates first."""
        if not config.entries:
            raise ValueError(f"{config!r} has no chosen entries; choose them from a few batches first: "
                             "config = select_sparse_entries(base_model, config, batches)")
        candidates = candidate_parameters(self.model, config)
        unknown = sorted(set(config.entries) - set(candidates))
        if unknown:
            raise ValueError(f"SparseConfig.entries names {unknown[:4]}, not candidate parameters of this model "
                             f"(trainable_types={config.trainable_types}, target_modules={config.target_modules}); "
                             f"candidates: {list(candidates)[:6]} ...")
        for key, k in config.entries.items():
            if k > candidates[key].size:
                raise ValueError(f"SparseConfig.entries[{key!r}] = {k}, more than its {candidates[key].size} entries")
        check_total(config, sum(p.size for p in candidates.values()))
        by_module: dict[str, dict[str, int]] = {}
        for key, k in config.entries.items():
            path, pname = key.rsplit(".", 1)
            by_module.setdefault(path, {})[pname] = k
        return {path: dict(counts=counts, indices=None if config.selection is None else
                           {p: config.selection[f"{path}.{p}"] for p in counts}) for path, counts in by_module.items()}

    # ---- the indices travel in the adapter file, beside the values -----------------------------------------
    def _sparse_slots(self, name: str):
        """(disk key of the values relative to this tuner, layer, pname) for every tensor adapter `name` trains."""
        for path, m in self.model.named_modules():
            if isinstance(m, SparseLayer) and name in m.adapters:
                for pname in m.trains(name):
                    yield f"model.{path}.sparse_{pname}", m, pname

    def adapter_file_extras(self, name: str) -> dict[str, object]:
        """{`base_model.model.<path>.sparse_weight_indices`: int32 (k,)}: each tensor's positions (-1s if unchosen)."""
        out = {}
        for key, m, pname in self._sparse_slots(name):
            idx = m.sparse_indices[name][pname]
            out[f"base_model.{key}{INDICES}"] = idx if idx is not None else np.full(
                m.values(name, pname).shape, -1, np.int32)
        return out

    def adapter_file_arrays(self, name: str) -> dict:
        """The values (as every method's weights) and, beside each, its indices: the sparse diff."""
        return {**super().adapter_file_arrays(name), **self.adapter_file_extras(name)}

    def load_file_extras(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Set each tensor's positions from the file (checked: k distinct, increasing, in range)."""
        slots = [(m, pname, m.checked_indices(name, pname, arrays[f"base_model.{key}{INDICES}"]))  # all checked
                 for key, m, pname in self._sparse_slots(name)]                                    # first
        for m, pname, idx in slots:
            m.set_indices(name, pname, idx, take_base_values=False)
