"""`BottleneckConfig`: sequential bottleneck adapters after the Linears `target_modules` names, and the two
classic layouts (Houlsby: after attention and after the MLP; Pfeiffer: after the MLP only).

Hugging Face PEFT has no bottleneck adapters; AdapterHub (the `adapters` library) calls them
`DoubleSeqBnConfig` (Houlsby) and `SeqBnConfig` (Pfeiffer), and its field names are used here:
`reduction_factor`, `non_linearity`, and where the adapters go, `mh_adapter` (after the attention output) and
`output_adapter` (after the MLP output). Saved as adapter_config.json with peft_type "BOTTLENECK".

Where that is in each model (the Linear whose output the adapter follows, the last one of the sublayer, before
the residual add):

    place            mh_adapter: attention output    output_adapter: MLP output
    mini GPT         attn.out_proj                   mlp.fc2
    Llama            self_attn.o_proj                mlp.down_proj

With target_modules None (the default) get_peft_model fills it from this table by `model.config.model_type`,
so `houlsby()` and `pfeiffer()` mean the same layout on either model, and the saved adapter_config.json names
the modules. Given target_modules, the adapters follow exactly those Linears, and the two flags are not used.

One AdapterHub default differs: its DoubleSeqBnConfig (Houlsby) uses non_linearity="swish", while `houlsby()`
here keeps this config's default, "relu" (SeqBnConfig's, the Pfeiffer layout's): swish is not among the
nonlinearities implemented (op.NON_LINEARITIES).

Another library's class has this name: LLM-Adapters (AGI-Edgerunners) defines a BottleneckConfig, also saved
with peft_type "BOTTLENECK", with other fields and defaults (bottleneck_size=256, non_linearity="tanh",
adapter_dropout, use_parallel_adapter, use_adapterp, scaling, ...). `from_dict` refuses such a file, naming
the first field it does not know, rather than loading it silently as a different adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from minipeft.nn.module import Module
from minipeft.peft.config import ConfigError, PeftConfig, check_field, check_target_fields, is_count, is_number
from minipeft.peft.tuners.bottleneck.op import NON_LINEARITIES
from minipeft.peft.tuners.targets import default_for

# by model_type: [the Linear that ends the attention sublayer, the one that ends the MLP]
SUBLAYER_OUTPUTS = {"minipeft-gpt": ["out_proj", "fc2"], "llama": ["o_proj", "down_proj"]}
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
    mh_adapter: bool = False                          # target_modules None: an adapter after each attention output
    output_adapter: bool = True                       # target_modules None: an adapter after each MLP output
    target_modules: list[str] | str | None = None     # Linears to follow; None: the places the two flags name
    layers_to_transform: list[int] | int | None = None  # only these block indices (None: all)
    modules_to_save: list[str] | None = None          # extra modules trained in full and saved (copied)

    def __post_init__(self):
        super().__post_init__()
        if self.bottleneck_size is not None:
            check_field(self, "bottleneck_size", is_count(self.bottleneck_size),
                        "an int >= 1 (the adapter's hidden width m), or None to use reduction_factor")
        if self.reduction_factor is not None:
            check_field(self, "reduction_factor", is_number(self.reduction_factor) and self.reduction_factor >= 1,
                        "a number >= 1 (m = floor(d / reduction_factor)), or None")
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ConfigError(f"BottleneckConfig: bottleneck_size={self.bottleneck_size!r} and reduction_factor="
                              f"{self.reduction_factor!r} both set the adapter's width; set one of them")
        check_field(self, "non_linearity", self.non_linearity in NON_LINEARITIES,
                    " or ".join(repr(k) for k in NON_LINEARITIES))
        for name in ("mh_adapter", "output_adapter"):
            check_field(self, name, isinstance(getattr(self, name), bool), "True or False")
        if self.target_modules is None:
            check_field(self, "output_adapter", self.mh_adapter or self.output_adapter,
                        "True when mh_adapter is False and target_modules is None (else no adapter is placed)")
        check_target_fields(self)

    @classmethod
    def houlsby(cls, **fields) -> BottleneckConfig:
        """Houlsby et al. (2019): an adapter after the attention output and after the MLP output of every block.

        non_linearity stays "relu" unless given; AdapterHub's DoubleSeqBnConfig uses "swish" (not available here).
        """
        return cls(**{"mh_adapter": True, "output_adapter": True, **fields})

    @classmethod
    def pfeiffer(cls, **fields) -> BottleneckConfig:
        """Pfeiffer et al. (2020): one adapter per block, after the MLP output (half of Houlsby's parameters)."""
        return cls(**{"mh_adapter": False, "output_adapter": True, **fields})

    def fill_targets(self, model: Module) -> None:
        """target_modules left None: the Linears mh_adapter and output_adapter name in `model` (see the table)."""
        if self.target_modules is None:
            attention, mlp = default_for(SUBLAYER_OUTPUTS, model, "BottleneckConfig.target_modules")
            self.target_modules = [name for name, on in ((attention, self.mh_adapter), (mlp, self.output_adapter))
                                   if on]

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
