"""`BitsAndBytesConfig`: how `quantize_model` stores a model's Linear layers, with transformers' field names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from minipeft.errors import ConfigError

DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass
class BitsAndBytesConfig:
    """4-bit NF4 quantization of every Linear (as transformers' BitsAndBytesConfig(load_in_4bit=True, ...)).

    QLoRA's recipe is `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True)`, which is what `quantize_model(model)` uses when given no config.
    The defaults below are transformers' (double quantization off) except two: load_in_4bit defaults to True
    and bnb_4bit_quant_type to "nf4" (transformers: False and "fp4"), since minipeft implements only 4-bit NF4
    and those are the only values that work. transformers' fields for what minipeft does not implement
    (UNSUPPORTED_FIELDS) are accepted at their transformers default, which has no effect, and refused otherwise.
    """

    # transformers' fields minipeft does not implement, with the values accepted (their defaults: no effect here)
    UNSUPPORTED_FIELDS: ClassVar[dict[str, tuple]] = {
        "bnb_4bit_quant_storage": ("uint8", np.uint8), "llm_int8_threshold": (6.0,),
        "llm_int8_has_fp16_weight": (False,), "llm_int8_enable_fp32_cpu_offload": (False,),
    }

    load_in_4bit: bool = True                  # must be True: 4-bit NF4 is what minipeft implements
    load_in_8bit: bool = False                 # LLM.int8() is not implemented: must be False
    bnb_4bit_quant_type: str = "nf4"           # the 4-bit code: "nf4" (bitsandbytes' "fp4" is not implemented)
    bnb_4bit_use_double_quant: bool = False    # quantize the float32 block scales again, to 8 bits (QLoRA's DQ)
    bnb_4bit_compute_dtype: Any = "float32"    # the float dtype weights dequantize to: "float32" or "float64"
    llm_int8_skip_modules: list[str] | None = None  # module names kept in float (transformers' field name,
    #                                             used for 4-bit too); None: ["lm_head"], as transformers keeps it
    blocksize: int = 64                        # weights per NF4 block (bitsandbytes' default; not a transformers field)
    nested_blocksize: int = 256                # block scales per 8-bit block of double quantization (likewise)
    bnb_4bit_quant_storage: Any = "uint8"      # the dtype packed codes are stored in: uint8 only
    llm_int8_threshold: float = 6.0            # LLM.int8()'s outlier threshold (8-bit only): 6.0, no effect
    llm_int8_has_fp16_weight: bool = False     # LLM.int8() keeps float16 weights (8-bit only): must be False
    llm_int8_enable_fp32_cpu_offload: bool = False  # offload skipped modules to the CPU in fp32: must be False
    quant_method: str = field(default="bitsandbytes", init=False)  # as transformers records it

    def __post_init__(self):
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"BitsAndBytesConfig.{name} = {getattr(self, name)!r}; it must be {allowed}")

        check("load_in_4bit", self.load_in_4bit is True, "True (4-bit NF4 is the quantization implemented)")
        check("load_in_8bit", self.load_in_8bit is False, "False (8-bit LLM.int8() is not implemented)")
        check("bnb_4bit_quant_type", self.bnb_4bit_quant_type == "nf4", "'nf4' (fp4 is not implemented)")
        check("bnb_4bit_use_double_quant", isinstance(self.bnb_4bit_use_double_quant, bool), "True or False")
        name = self.bnb_4bit_compute_dtype
        name = np.dtype(name).name if isinstance(name, type) and issubclass(name, np.floating) else name
        check("bnb_4bit_compute_dtype", name in DTYPES, f"one of {sorted(DTYPES)} (or np.float32 / np.float64)")
        self.bnb_4bit_compute_dtype = name
        skip = self.llm_int8_skip_modules
        names = isinstance(skip, list) and all(isinstance(s, str) for s in skip)
        check("llm_int8_skip_modules", skip is None or names, "None or a list of module names such as ['lm_head']")
        for f, accepted in self.UNSUPPORTED_FIELDS.items():
            value = getattr(self, f)
            check(f, any(value == v for v in accepted), f"{accepted[0]!r}, transformers' default: minipeft does not "
                  "implement this option, so only the default (no effect) is accepted")
        self.bnb_4bit_quant_storage = np.dtype(self.bnb_4bit_quant_storage).name   # np.uint8 -> "uint8", as stored
        for f in ("blocksize", "nested_blocksize"):
            v = getattr(self, f)
            check(f, isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (f != "blocksize" or v % 2 == 0),
                  "an even int >= 2 (two 4-bit codes share a byte)" if f == "blocksize" else "an int >= 1")

    @property
    def compute_dtype(self):
        return DTYPES[self.bnb_4bit_compute_dtype]

    @property
    def skip_modules(self) -> list[str]:
        return ["lm_head"] if self.llm_int8_skip_modules is None else list(self.llm_int8_skip_modules)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BitsAndBytesConfig:
        """Rebuild from to_dict(), or from transformers' quantization_config (config.json).

        transformers also writes private copies `_load_in_4bit` / `_load_in_8bit`; they are dropped when they
        agree with load_in_4bit / load_in_8bit (or stand in for them when those are absent), refused otherwise.
        """
        d = {k: v for k, v in d.items() if k != "quant_method"}
        for private in ("_load_in_4bit", "_load_in_8bit"):
            if private in d:
                public, value = private[1:], d.pop(private)
                if d.setdefault(public, value) != value:
                    raise ConfigError(f"BitsAndBytesConfig: {private}={value!r} disagrees with {public}={d[public]!r}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"BitsAndBytesConfig: {e}") from None


def qlora_config(**overrides) -> BitsAndBytesConfig:
    """QLoRA's recipe: NF4, blocks of 64, double quantization (blocks of 256), float32 compute."""
    return BitsAndBytesConfig(**{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                 "bnb_4bit_use_double_quant": True, **overrides})
