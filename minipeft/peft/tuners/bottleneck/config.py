"""`BottleneckConfig`: sequential bottleneck adapters after the Linears `target_modules` names, and the two
classic layouts (Houlsby: after attention and after the MLP; Pfeiffer: after the MLP only).

Hugging Face PEFT has no bottleneck adapters; AdapterHub (the `adapters` library) calls them
`DoubleSeqBnConfig` (Houlsby) and `SeqBnConfig` (Pfeiffer), and its field names are used here:
`reduction_factor`, `non_linearity`. Saved as adapter_config.json with peft_type "BOTTLENECK".

One AdapterHub default differs: its DoubleSeqBnConfig (Houlsby) uses non_linearity="swish", while `houlsby()`
here keeps this config's default, "relu" (SeqBnConfig's, the Pfeiffer layout's): swish is not among the
nonlinearities implemented (op.NON_LINEARITIES).

Another library's class has this name: LLM-Adapters (AGI-Edgerunners) defines a BottleneckConfig, also saved
with peft_type "BOTTLENECK", with other fields and defaults (bottleneck_size=256, non_linearity="tanh",
adapter_dropout, use_parallel_adapter, use_adapterp, scaling, ...). `from_dict` refuses such a file, naming
the first field it does not know, rather than loading it silently as a different adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from minipeft.peft.config import ConfigError, PeftConfig, check_field, check_target_fields, is_number
from minipeft.peft.tuners.bottleneck.op import NON_LINEARITIES

HOULSBY_TARGETS = ["out_proj", "fc2"]     # after the attention output and after the MLP output of each block
PFEIFFER_TARGETS = ["fc2"]                # after the MLP output only
DEFAULT_REDUCTION_FACTOR = 16             # AdapterHub's default: m = d / 16 when neither size field is set


@dataclass
class BottleneckConfig(PeftConfig):
    """out = y + f(y W_down^T + b_down) W_up^T + b_up after each targeted Linear (y its output, width d).

    non_linearity: "relu" (the default, as AdapterHub's SeqBnConfig) or "gelu", which here is GPT-2's tanh
    approximation (transformers' "gelu_new"), not the exact erf GELU (transformers' "gelu", torch's nn.GELU()).
    """

    PEFT_TYPE: ClassVar[str] = "BOTTLENECK"

    bottleneck_size: int | None = None                # m, the adapter's hidden width, 1 <= m <= d (or reduction_factor)
    reduction_factor: int | float | None = None       # m = floor(d / reduction_factor), factor >= 1; neither set: 16
    non_linearity: str = "relu"                       # f between the projections: "relu" or "gelu" (see above)
    target_modules: list[str] | str = field(default_factory=lambda: list(PFEIFFER_TARGETS))  # Linears to follow
    layers_to_transform: list[int] | int | None = None  # only these block indices (None: all)
    modules_to_save: list[str] | None = None          # extra modules trained in full and saved (copied)

    def __post_init__(self):
        super().__post_init__()
        if self.bottleneck_size is not None:
            check_field(self, "bottleneck_size", isinstance(self.bottleneck_size, int)
                        and not isinstance(self.bottleneck_size, bool) and self.bottleneck_size >= 1,
                        "an int >= 1 (the adapter's hidden width m), or None to use reduction_factor")
        if self.reduction_factor is not None:
            check_field(self, "reduction_factor", is_number(self.reduction_factor) and self.reduction_factor >= 1,
                        "a number >= 1 (m = floor(d / reduction_factor)), or None")
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ConfigError(f"BottleneckConfig: bottleneck_size={self.bottleneck_size!r} and reduction_factor="
                              f"{self.reduction_factor!r} both set the adapter's width; set one of them")
        check_field(self, "non_linearity", self.non_linearity in NON_LINEARITIES,
                    " or ".join(repr(k) for k in NON_LINEARITIES))
        check_target_fields(self)

    @classmethod
    def houlsby(cls, **fields) -> BottleneckConfig:
        """Houlsby et al. (2019): an adapter after the attention output and after the MLP output of every block.

        non_linearity stays "relu" unless given; AdapterHub's DoubleSeqBnConfig uses "swish" (not available here).
        """
        return cls(**{"target_modules": list(HOULSBY_TARGETS), **fields})

    @classmethod
    def pfeiffer(cls, **fields) -> BottleneckConfig:
        """Pfeiffer et al. (2020): one adapter per block, after the MLP output (half of Houlsby's parameters)."""
        return cls(**{"target_modules": list(PFEIFFER_TARGETS), **fields})

    def size_for(self, d: int, path: str) -> int:
        """m for an adapter after a layer of output width d at `path`: bottleneck_size, or d // reduction_factor.

        A bottleneck projects down, so m <= d: a wider one is refused (it is also what catches a typo such as
        bottleneck_size=6400 before it allocates gigabytes).
        """
        if self.bottleneck_size is not None:
            if self.bottleneck_size > d:
                raise ConfigError(f"BottleneckConfig.bottleneck_size={self.bottleneck_size!r} is wider than the output "
                                  f"of {path!r} (width {d}); a bottleneck adapter projects down: use at most {d}")
            return self.bottleneck_size
        factor = DEFAULT_REDUCTION_FACTOR if self.reduction_factor is None else self.reduction_factor
        m = int(d // factor)
        if m < 1:
            raise ConfigError(f"BottleneckConfig.reduction_factor={factor!r} gives a bottleneck of {m} for {path!r} "
                              f"(output width {d}); use a factor <= {d} or set bottleneck_size")
        return m
