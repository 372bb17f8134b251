"""Sparse fine-tuning: the top p% of the model's entries, ranked by a gradient score (Fisher or |g|), train as
values at fixed indices, stored as a sparse diff. One folder: config, op, layer, scoring, model, register (with the
contract case and recipe)."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.sparse.config import SparseConfig, entry_count
from minipeft.peft.tuners.sparse.layer import SparseLayer, apply_sparse_diff, remove_sparse_diff
from minipeft.peft.tuners.sparse.model import SparseModel
from minipeft.peft.tuners.sparse.op import SparseReplaceFn, sparse_replace
from minipeft.peft.tuners.sparse.score import gradient_scores, select_sparse_entries, top_entries


def _top10(base, batches) -> SparseConfig:
    return select_sparse_entries(base, SparseConfig(percent=10), batches)


# the contract's case: the top 10% of all the base's entries by Fisher score on one batch, round(0.1 N)
CASE = ContractCase(_top10, lambda base: round(10 * base.num_parameters() / 100))
register_peft_method(name="sparse", config_cls=SparseConfig, model_cls=SparseModel, prefix="sparse_",
                     contract={"gpt": CASE, "llama": CASE},
                     recipes={"sparse": RecipeSpec(   # tutorial 07's: the top 1% by Fisher score over 8 batches
                         "sparse 1% (Fisher)", 3e-2, "tutorial 07 (best of 4 in bench/lr_probe.py, 60 steps of 8)",
                         "selective", lambda base, batches: select_sparse_entries(
                             base, SparseConfig(percent=1.0, score="fisher"), batches), batches=8)})

__all__ = ["SparseConfig", "SparseLayer", "SparseModel", "SparseReplaceFn", "apply_sparse_diff", "entry_count",
           "gradient_scores", "remove_sparse_diff", "select_sparse_entries", "sparse_replace", "top_entries"]
