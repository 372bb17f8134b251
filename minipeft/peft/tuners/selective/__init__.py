"""Selective fine-tuning: train chosen *existing* parameters of the base model (BitFit, LayerNorm tuning,
the last k blocks, the embedding table, or all of them: full fine-tuning), each as a per-adapter copy so the
base stays untouched. One folder: config (with the named choices), layer, model, register
(with the contract case and recipes); the selection it shares with sparse fine-tuning is tuners/selection.py."""

from minipeft.peft.registry import ContractCase, RecipeSpec, register_peft_method
from minipeft.peft.tuners.selection import select_parameters
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

T07 = "tutorial 07 (best of 4 in bench/lr_probe.py, 60 steps of 8)"
register_peft_method(name="selective", config_cls=SelectiveConfig, model_cls=SelectiveModel, prefix="selective_",
                     contract={
    # a trained copy of every norm's parameters, of fc1 / gate_proj (and their biases, if any) and of the embedding
    # table, which the tied head also reads: the sum of those tensors' sizes
    "gpt": ContractCase(lambda base, batches: SelectiveConfig(trainable_types=["norm"], target_modules=["fc1", "wte"]),
                        lambda base: sum(p.size for n, p in base.named_parameters()
                                         if ".ln_" in n or n.startswith(("ln_f.", "wte.")) or ".fc1." in n)),
    "llama": ContractCase(lambda base, batches: SelectiveConfig(trainable_types=["norm"],
                                                                target_modules=["gate_proj", "embed_tokens"]),
                          lambda base: (2 * base.config.n_layer + 1) * base.config.d_model
                          + base.config.n_layer * base.config.d_model * base.config.d_ff
                          + base.config.vocab_size * base.config.d_model),
}, recipes={
    "bitfit": RecipeSpec("BitFit", 1e-1, T07, "selective", lambda base, batches: bitfit_config()),
    "layernorm": RecipeSpec("LayerNorm only", 3e-1, T07, "selective", lambda base, batches: layernorm_config()),
    "last-layer": RecipeSpec("last block", 1e-2, T07, "selective",
                             lambda base, batches: last_k_layers_config(1, base.config.n_layer)),
})

__all__ = ["SelectiveConfig", "SelectiveLayer", "SelectiveModel", "bitfit_config",
           "embeddings_config", "full_finetune_config", "last_k_layers_config", "layernorm_config",
           "select_parameters"]
