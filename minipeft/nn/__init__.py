"""PyTorch-like modules: Module, Parameter, the basic layers, the mini GPT and the Llama model."""

from minipeft.nn.causal_lm import CausalLM, KVCache
from minipeft.nn.gpt import GPT, PRESETS, Block, CausalSelfAttention, GPTConfig
from minipeft.nn.layers import MLP, Dropout, Embedding, LayerNorm, Linear
from minipeft.nn.llama import LlamaConfig, LlamaForCausalLM, RMSNorm
from minipeft.nn.module import Module, ModuleDict, ModuleList, Parameter, ParameterDict

__all__ = [
    "CausalLM", "GPT", "MLP", "PRESETS", "Block", "CausalSelfAttention", "Dropout", "Embedding", "GPTConfig", "KVCache",
    "LayerNorm", "Linear", "LlamaConfig", "LlamaForCausalLM", "RMSNorm", "Module", "ModuleDict", "ModuleList",
    "Parameter", "ParameterDict",
]
