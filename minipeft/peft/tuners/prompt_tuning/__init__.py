"""Prompt tuning (Lester et al., 2021): trainable virtual-token embeddings in front of every input; the base model,
its embedding table included, stays frozen. One folder: config, op, model, the nearest-token reading of a learned
prompt, and the line that registers the method."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.prompt_tuning.config import PromptTuningConfig
from minipeft.peft.tuners.prompt_tuning.interpret import nearest_tokens, prompt_nearest_tokens
from minipeft.peft.tuners.prompt_tuning.model import PromptEmbedding, PromptTuningModel, text_init_ids
from minipeft.peft.tuners.prompt_tuning.op import PrependPromptFn, prepend_prompt

register_peft_method(name="prompt_tuning", config_cls=PromptTuningConfig, model_cls=PromptTuningModel,
                     prefix="prompt_")

__all__ = ["PrependPromptFn", "PromptEmbedding", "PromptTuningConfig", "PromptTuningModel", "nearest_tokens",
           "prepend_prompt", "prompt_nearest_tokens", "text_init_ids"]
