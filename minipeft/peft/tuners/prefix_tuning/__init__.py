"""Prefix tuning (Li & Liang, 2021): trainable keys and values in front of every attention layer's, optionally made
by a small MLP while training and folded into a plain table afterwards. One folder: config, op (the MLP), model,
and the line that registers the method. Its weights are named as Hugging Face names them (`prompt_encoder`, saved
as `prompt_embeddings`), so it shares prompt tuning's parameter prefix, "prompt_"."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.prefix_tuning.config import PrefixTuningConfig
from minipeft.peft.tuners.prefix_tuning.model import PrefixEncoder, PrefixTuningModel, split_prefix_table
from minipeft.peft.tuners.prefix_tuning.op import PrefixProjectionFn, prefix_projection

register_peft_method(name="prefix_tuning", config_cls=PrefixTuningConfig, model_cls=PrefixTuningModel,
                     prefix="prompt_")

__all__ = ["PrefixEncoder", "PrefixProjectionFn", "PrefixTuningConfig", "PrefixTuningModel", "prefix_projection",
           "split_prefix_table"]
