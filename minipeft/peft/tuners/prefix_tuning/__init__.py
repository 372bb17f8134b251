"""Prefix tuning (Li & Liang, 2021): trainable keys and values in front of every attention layer's, optionally made
by a small MLP while training and folded into a plain table afterwards. One folder: config, op (the MLP), model,
and the registration (with its contract case and recipe). Its weights are named as Hugging Face names them
(`prompt_encoder`, saved as `prompt_embeddings`), so it shares prompt tuning's parameter prefix, "prompt_"."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.prefix_tuning.config import PrefixTuningConfig
from minipeft.peft.tuners.prefix_tuning.model import PrefixEncoder, PrefixTuningModel, split_prefix_table
from minipeft.peft.tuners.prefix_tuning.op import PrefixProjectionFn, prefix_projection

# the contract's case: a key and a value of kv_width (n_kv_head * head_dim, Hugging Face's) per layer per token
CASE = ContractCase(lambda base, batches: PrefixTuningConfig(num_virtual_tokens=2),
                    lambda base: 2 * 2 * base.config.n_layer * base.kv_width)
register_peft_method(name="prefix_tuning", config_cls=PrefixTuningConfig, model_cls=PrefixTuningModel,
                     prefix="prompt_", contract={"gpt": CASE, "llama": CASE}, recipes={
    "prefix-tuning": RecipeSpec("prefix tuning n=20", 3e-1, "tutorial 08 (best of 6 in bench/lr_probe.py; AdamW, "
                                "not Lester et al.'s Adafactor)", "soft prompt",
                                lambda base, batches: PrefixTuningConfig(num_virtual_tokens=20)),
})

__all__ = ["PrefixEncoder", "PrefixProjectionFn", "PrefixTuningConfig", "PrefixTuningModel", "prefix_projection",
           "split_prefix_table"]
