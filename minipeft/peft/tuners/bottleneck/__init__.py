"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): out = y + f(y W_down^T + b_down) W_up^T + b_up
after the targeted Linears. One folder: config, op, layer, model, and the registration (with the
method's contract case and recipes)."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.bottleneck.config import BottleneckConfig
from minipeft.peft.tuners.bottleneck.layer import BottleneckLayer
from minipeft.peft.tuners.bottleneck.model import BottleneckModel
from minipeft.peft.tuners.bottleneck.op import BottleneckAdapterFn, bottleneck_adapter
from minipeft.peft.tuners.lora import ALL_LINEAR, LORA_R
from minipeft.peft.tuners.targets import modules_named


def _matched(layout: str):
    """The layout's config whose widths m give n_adapters x (2 d m + d + m) parameters closest to LoRA r=8 on every
    block linear (the comparison's "LoRA all linear"), 1 <= m <= d."""
    def config(base, batches) -> BottleneckConfig:
        cfg, n = base.config, (2 if layout == "houlsby" else 1) * base.config.n_layer   # Houlsby: 2 per block
        budget = sum(LORA_R * (m.in_features + m.out_features) for m in modules_named(base, set(ALL_LINEAR)))
        m = int(min(max(round((budget / n - cfg.d_model) / (2 * cfg.d_model + 1)), 1), cfg.d_model))
        return getattr(BottleneckConfig, layout)(bottleneck_size=m, non_linearity="relu")
    return config


def _houlsby_count(base) -> int:
    """2 d m + d + m per adapter, d the output width of the Linear it follows (Houlsby: out_proj / o_proj and fc2 /
    down_proj), m = 3."""
    return sum(2 * m.out_features * 3 + m.out_features + 3
               for m in modules_named(base, {"out_proj", "fc2", "o_proj", "down_proj"}))


CASE = ContractCase(lambda base, batches: BottleneckConfig.houlsby(bottleneck_size=3, non_linearity="gelu"),
                    _houlsby_count)
T06 = "tutorial 06 (60-step validation-loss grid)"
register_peft_method(name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="adapter_",
                     contract={"gpt": CASE, "llama": CASE},
                     recipes={"houlsby": RecipeSpec("Houlsby adapters", 1e-2, T06, "additive", _matched("houlsby")),
                              "pfeiffer": RecipeSpec("Pfeiffer adapters", 1e-2, T06, "additive", _matched("pfeiffer"))})

__all__ = ["BottleneckAdapterFn", "BottleneckConfig", "BottleneckLayer", "BottleneckModel", "bottleneck_adapter"]
