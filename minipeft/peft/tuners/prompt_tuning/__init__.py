"""Prompt tuning (Lester et al., 2021): trainable virtual-token embeddings in front of every input; the base model,
its embedding table included, stays frozen. One folder: config, op, model, the nearest-token reading of a learned
prompt, and the registration (with its contract case and recipe)."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.prompt_tuning.config import PromptTuningConfig
from minipeft.peft.tuners.prompt_tuning.interpret import nearest_tokens, prompt_nearest_tokens
from minipeft.peft.tuners.prompt_tuning.model import PromptEmbedding, PromptTuningModel, text_init_ids
from minipeft.peft.tuners.prompt_tuning.op import PrependPromptFn, prepend_prompt

# the contract's case: n virtual tokens of d_model each
CASE = ContractCase(lambda base, batches: PromptTuningConfig(num_virtual_tokens=3),
                    lambda base: 3 * base.config.d_model)
register_peft_method(name="prompt_tuning", config_cls=PromptTuningConfig, model_cls=PromptTuningModel,
                     prefix="prompt_", contract={"gpt": CASE, "llama": CASE}, recipes={
    "prompt-tuning": RecipeSpec("prompt tuning n=20", 30.0, "tutorial 08 (best of 10 in bench/lr_probe.py; AdamW, "
                                "not Lester et al.'s Adafactor)", "soft prompt",
                                lambda base, batches: PromptTuningConfig(num_virtual_tokens=20,
                                                                prompt_tuning_init="SAMPLE_VOCAB")),
})

__all__ = ["PrependPromptFn", "PromptEmbedding", "PromptTuningConfig", "PromptTuningModel", "nearest_tokens",
           "prepend_prompt", "prompt_nearest_tokens", "text_init_ids"]
