"""PyTorch-like modules: Module, Parameter, the basic layers and the GPT model."""

from minipeft.nn.causal_lm import CausalLM, KVCache
from minipeft.nn.gpt import GPT, PRESETS, Block, CausalSelfAttention, GPTConfig
from minipeft.nn.layers import MLP, Dropout, Embedding, LayerNorm, Linear
from minipeft.nn.module import Module, ModuleDict, ModuleList, Parameter, ParameterDict

__all__ = [
    "CausalLM", "GPT", "MLP", "PRESETS", "Block", "CausalSelfAttention", "Dropout", "Embedding", "GPTConfig", "KVCache",
    "LayerNorm", "Linear", "Module", "ModuleDict", "ModuleList", "Parameter", "ParameterDict",
]
