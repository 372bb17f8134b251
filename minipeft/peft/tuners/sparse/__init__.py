"""Sparse fine-tuning: the top p% of the model's entries, ranked by a gradient score (Fisher or |g|), train as
values at fixed indices, stored as a sparse diff. One folder: config, op, layer, scoring, model, register."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.sparse.config import SparseConfig, entry_count
from minipeft.peft.tuners.sparse.layer import SparseLayer, apply_sparse_diff, remove_sparse_diff
from minipeft.peft.tuners.sparse.model import SparseModel
from minipeft.peft.tuners.sparse.op import SparseReplaceFn, sparse_replace
from minipeft.peft.tuners.sparse.score import gradient_scores, select_sparse_entries, top_entries

register_peft_method(name="sparse", config_cls=SparseConfig, model_cls=SparseModel, prefix="sparse_")

__all__ = ["SparseConfig", "SparseLayer", "SparseModel", "SparseReplaceFn", "apply_sparse_diff", "entry_count",
           "gradient_scores", "remove_sparse_diff", "select_sparse_entries", "sparse_replace", "top_entries"]
