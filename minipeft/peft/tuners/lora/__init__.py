"""LoRA (Hu et al., 2021): W = W0 + (alpha / r) B A on the targeted Linear layers. One folder: config, op, layer,
model, and the registration (with its contract case and recipes). On a 4-bit base (minipeft.quant) the same
adapters make QLoRA: qlora_op.py and quantized.py's LoraLinear4bit. The ops' fast paths are in
minipeft/workshop/fast/."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.lora.layer import LoraLayer, LoraLinear
from minipeft.peft.tuners.lora.model import LoraModel
from minipeft.peft.tuners.lora.op import LoraLinearFn, lora_linear
from minipeft.peft.tuners.lora.qlora_op import QLoraLinearFn, qlora_linear
from minipeft.peft.tuners.lora.quantized import LoraLinear4bit
from minipeft.peft.tuners.targets import modules_named
from minipeft.quant.config import BitsAndBytesConfig

LORA_R, LORA_ALPHA = 8, 16       # tutorial 03's LoRA, the comparison's (and the bottleneck widths' budget)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]   # the GPT's "all-linear" (its head is tied)
NF4_DQ = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
T06 = "tutorial 06 (60-step validation-loss grid)"


def _recipe(label: str, source: str, targets, quantization=None) -> RecipeSpec:
    # one rate for the three (tutorial 06's 1e-2, better than the 3e-3 that tutorials 03, 05 and 10 used at 200-300
    # steps; the comparison trains for fewer), so LoRA against QLoRA compares the base's format only
    return RecipeSpec(label, 1e-2, source, "reparameterized", lambda base, batches: LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=targets), quantization=quantization)


def _llama_count(base) -> int:
    """r (in + out): q_proj d -> d and v_proj d -> kv at r=2 in every layer, gate_proj d -> d_ff at r=2 in layer 0 and
    r=3 in layer 1 (the rank_pattern)."""
    c = base.config
    return c.n_layer * (2 * 2 * c.d_model + 2 * (c.d_model + base.kv_width)) + (2 + 3) * (c.d_model + c.d_ff)


register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel, prefix="lora_", contract={
    # r (in + out) per adapted matrix, with a rank_pattern so that per-layer ranks are counted too
    "gpt": ContractCase(lambda base, batches: LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "fc1"],
                                                         rank_pattern={"blocks.1.mlp.fc1": 3}),
                        lambda base: sum((3 if m is base.blocks[1].mlp.fc1 else 2) * (m.in_features + m.out_features)
                                         for m in modules_named(base, {"q_proj", "v_proj", "fc1"}))),
    "llama": ContractCase(lambda base, batches: LoraConfig(r=2, lora_alpha=4, target_modules=[
        "q_proj", "v_proj", "gate_proj"], rank_pattern={"model.layers.1.mlp.gate_proj": 3}), _llama_count),
}, recipes={
    "lora-qv": _recipe("LoRA r=8 q,v", T06 + " (module docstring)", ["q_proj", "v_proj"]),
    "lora-all": _recipe("LoRA r=8 all linear", T06, "all-linear"),
    "qlora": _recipe("QLoRA r=8 (NF4+DQ)", T06 + ", as LoRA all linear", "all-linear", NF4_DQ),
})

__all__ = ["LoraConfig", "LoraLayer", "LoraLinear", "LoraLinear4bit", "LoraLinearFn", "LoraModel", "QLoraLinearFn",
           "lora_linear", "qlora_linear"]
