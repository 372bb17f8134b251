"""Selective fine-tuning: train chosen *existing* parameters of the base model (BitFit, LayerNorm tuning,
the last k blocks, the embedding table, or all of them: full fine-tuning), each as a per-adapter copy so the
base stays untouched. One folder: config (with the named choices), the selection, layer, model, register."""

from minipeft.peft.registry import register_peft_method
from minipeft.peft.tuners.selective.config import (
    SelectiveConfig,
    bitfit_config,
    embeddings_config,
    full_finetune_config,
    last_k_layers_config,
    layernorm_config,
)
from minipeft.peft.tuners.selective.layer import SelectiveLayer
from minipeft.peft.tuners.selective.model import SelectiveModel
from minipeft.peft.tuners.selective.select import select_parameters

register_peft_method(name="selective", config_cls=SelectiveConfig, model_cls=SelectiveModel, prefix="selective_")

__all__ = ["SelectiveConfig", "SelectiveLayer", "SelectiveModel", "bitfit_config",
           "embeddings_config", "full_finetune_config", "last_k_layers_config", "layernorm_config",
           "select_parameters"]
