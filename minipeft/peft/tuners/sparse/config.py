"""`SparseConfig`: train the top p% of a model's entries, ranked by a gradient score, as a sparse diff."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import ClassVar

from minipeft.peft.config import ConfigError, PeftConfig, check_field, is_number
from minipeft.peft.tuners.selection import check_selection_fields

SCORES = ("fisher", "magnitude")
MAX_ENTRIES = 2**31 - 1      # indices are stored as int32


def entry_count(percent: float, n: int) -> int:
    """How many of n candidate entries p percent is: the nearest whole number, at least one."""
    return min(n, max(1, round(percent * n / 100)))


@dataclass
class SparseConfig(PeftConfig):
    """Sparse fine-tuning: only the top `percent`% of the candidate entries train, chosen by `score`.

    The entries are chosen from data before injection: `config = select_sparse_entries(base, config,
    batches)` fills `entries` (how many train in each tensor, saved in adapter_config.json) and `selection`
    (which ones: their flat indices, saved in the adapter's weights file beside their values).
    """

    PEFT_TYPE: ClassVar[str] = "SPARSE"

    percent: float = 1.0                                # p: the top p% of the candidate entries train, 0 < p <= 100
    score: str = "fisher"                               # the ranking: "fisher", mean g^2 over the scoring batches
    #                                                     (an empirical Fisher estimate), or "magnitude", mean |g|
    trainable_types: list[str] | None = None            # candidate tensors by kind ("bias", "norm", "all");
    #                                                     None: ["all"] unless target_modules is set, then []
    target_modules: list[str] | str | None = None       # candidate tensors by module name or one regex
    layers_to_transform: list[int] | int | None = None  # keep only candidates inside these block indices
    entries: dict[str, int] = field(default_factory=dict)   # {parameter path: entries that train there},
    #                                                         filled by select_sparse_entries
    selection: dict | None = field(default=None, repr=False, compare=False)  # {parameter path: sorted flat
    #                                                         indices}; not written to adapter_config.json

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "percent", is_number(self.percent) and 0 < self.percent <= 100, "a number in (0, 100]")
        check_field(self, "score", self.score in SCORES, f"one of {list(SCORES)}")
        check_selection_fields(self, default_types=["all"])
        e = self.entries
        check_field(self, "entries", isinstance(e, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_ENTRIES
            for k, v in e.items()), "a dict {parameter path: number of entries >= 1}")
        if self.selection is not None:
            self._check_selection()

    def _check_selection(self) -> None:
        s = self.selection
        ok = isinstance(s, dict) and all(isinstance(k, str) and hasattr(v, "ndim") and hasattr(v, "dtype")
                                         and v.ndim == 1 and v.dtype.kind in "iu" for k, v in s.items())
        if not ok:
            raise ConfigError(f"SparseConfig.selection must be None or a dict {{parameter path: 1-D integer array "
                              f"of flat indices}} (select_sparse_entries makes it), got {type(s).__name__}")
        counts = {k: int(v.shape[0]) for k, v in s.items()}
        if not self.entries:
            self.entries = counts
        elif counts != self.entries:
            raise ConfigError(f"SparseConfig.selection holds {counts} entries per tensor but entries says "
                              f"{self.entries}; make both with select_sparse_entries")

    @property
    def total_entries(self) -> int:
        return sum(self.entries.values())

    def to_dict(self) -> dict:
        """The fields adapter_config.json holds: everything but `selection` (its indices go in the weights file)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "selection"}


def check_total(config: SparseConfig, n_candidates: int) -> None:
    """The entries add up to percent of the candidates (a file edited by hand would not)."""
    want = entry_count(config.percent, n_candidates)
    if config.total_entries != want:
        raise ConfigError(f"SparseConfig.entries add up to {config.total_entries} but percent={config.percent} of "
                          f"the {n_candidates} candidate entries is {want}; choose them again with "
                          "select_sparse_entries")

