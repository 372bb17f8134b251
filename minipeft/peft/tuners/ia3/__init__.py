"""(IA)^3 (Liu et al., 2022): learned vectors rescale the keys, the values and the MLP's inner activation. One folder:
config, op, layer, model, and the registration (with its contract case and recipe)."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.ia3.config import IA3Config
from minipeft.peft.tuners.ia3.layer import IA3Linear
from minipeft.peft.tuners.ia3.model import IA3Model
from minipeft.peft.tuners.ia3.op import IA3LinearFn, ia3_linear
from minipeft.peft.tuners.targets import modules_named

register_peft_method(name="ia3", config_cls=IA3Config, model_cls=IA3Model, prefix="ia3_", contract={
    # one number per output of k_proj and v_proj, one per input of fc2 (the MLP's inner activation)
    "gpt": ContractCase(lambda base, batches: IA3Config(target_modules=["k_proj", "v_proj", "fc2"],
                                                        feedforward_modules=["fc2"]),
                        lambda base: sum(m.out_features for m in modules_named(base, {"k_proj", "v_proj"}))
                        + sum(m.in_features for m in modules_named(base, {"fc2"}))),
    # Hugging Face's Llama defaults: k_proj's and v_proj's outputs (kv width each), down_proj's input (d_ff)
    "llama": ContractCase(lambda base, batches: IA3Config(),
                          lambda base: base.config.n_layer * (2 * base.kv_width + base.config.d_ff)),
}, recipes={   # the model type's defaults: keys, values and fc2 on the GPT, the paper's
    "ia3": RecipeSpec("(IA)^3", 3e-1, "tutorial 06 (60-step validation-loss grid) (loss fell at every step up to "
                      "3e-1)", "additive", lambda base, batches: IA3Config()),
})

__all__ = ["IA3Config", "IA3Linear", "IA3LinearFn", "IA3Model", "ia3_linear"]
