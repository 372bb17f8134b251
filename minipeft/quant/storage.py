"""Storage accounting: bits per parameter in closed form, and the bytes of a model, measured or from shapes.

Per quantized weight of n values, blocks of B (64) and, with double quantization, nested blocks of B2 (256):

    plain NF4:  n/2 bytes of codes + 4 n/B bytes of float32 scales            -> 4 + 32/B bits per parameter
    NF4 + DQ:   n/2 + n/B bytes of 8-bit scale codes + 4 ceil(n/(B B2)) bytes of nested float32 scales
                + 4 bytes of mean                                              -> 4 + 8/B + 32/(B B2) + 32/n bits

With B = 64, B2 = 256: 4.5 and 4.126953125 (+ 32/n, the one mean per tensor, which QLoRA's figure of
0.127 bits for the scales leaves out). `bits_per_parameter` gives the closed form as an exact Fraction;
`weight_bytes` the exact bytes of one matrix; `model_bytes` measures what a model's arrays hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

from minipeft.nn.module import Module
from minipeft.quant.linear4bit import Linear4bit


def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, nested_blocksize: int = 256) -> Fraction:
    """4 + 32/B, or 4 + 8/B + 32/(B B2) with double quantization (the per-tensor mean left out), exactly."""
    if not double_quant:
        return 4 + Fraction(32, blocksize)
    return 4 + Fraction(8, blocksize) + Fraction(32, blocksize * nested_blocksize)


def weight_bytes(rows: int, cols: int, *, quantized: bool = True, blocksize: int = 64, double_quant: bool = True,
                 nested_blocksize: int = 256, float_bytes: int = 4) -> int:
    """Exact bytes of one (rows, cols) weight: in float (float_bytes each), or NF4 with float32 scales."""
    n = rows * cols
    if not quantized:
        return n * float_bytes
    nblocks = n // blocksize
    if not double_quant:
        return n // 2 + 4 * nblocks
    return n // 2 + nblocks + 4 * -(-nblocks // nested_blocksize) + 4


def bytes_from_shapes(matrices: Iterable[tuple[int, int]], other_params: int, *, quantized: bool, blocksize: int = 64,
                      double_quant: bool = True, nested_blocksize: int = 256, float_bytes: int = 4) -> int:
    """Bytes of a model from its shapes alone: the matrices (quantized or not) plus `other_params` floats."""
    total = other_params * float_bytes
    for rows, cols in matrices:
        total += weight_bytes(rows, cols, quantized=quantized, blocksize=blocksize, double_quant=double_quant,
                              nested_blocksize=nested_blocksize, float_bytes=float_bytes)
    return total


def model_bytes(model: Module) -> dict[str, int]:
    """Measured from the arrays held: {"quantized": bytes of the 4-bit weights and their scales, "float": every
    other parameter (embeddings, norms, biases, float Linears), "total"}; a shared parameter counts once."""
    quantized_ids: set[int] = set()
    quantized = 0
    for _, m in model.named_modules():
        if isinstance(m, Linear4bit):
            quantized += m.storage_bytes()
            quantized_ids |= {id(p) for p in (m.weight, m.absmax, m.nested_absmax, m.offset) if p is not None}
    floats = sum(int(p.data.nbytes) for p in model.parameters() if id(p) not in quantized_ids)
    return {"quantized": quantized, "float": floats, "total": quantized + floats}


def gpt_matrices(cfg) -> tuple[list[tuple[int, int]], int]:
    """(the block matrices (rows, cols), every other parameter's count) of a minipeft GPTConfig."""
    C, F, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    mats = [(C, C)] * (4 * L) + [(F, C), (C, F)] * L
    bias = (4 * C + F + C) * L if cfg.bias else 0
    norms = (2 * L + 1) * C * (2 if cfg.bias else 1)
    other = cfg.vocab_size * C + bias + norms + (cfg.context_length * C if cfg.position_embedding == "learned" else 0)
    if not cfg.tie_embeddings:
        other += cfg.vocab_size * C
    return mats, other


def llama_config_matrices(cfg) -> tuple[list[tuple[int, int]], int]:
    """(the layer matrices (rows, cols), every other parameter's count) of a minipeft LlamaConfig: q, k, v, o (k and v
    n_kv_head * head_dim rows), gate, up, down per layer; the embedding, an untied lm_head, the RMSNorm weights."""
    C, F, L, Ckv = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.n_kv_head * cfg.head_dim
    mats = [(C, C), (Ckv, C), (Ckv, C), (C, C), (F, C), (F, C), (C, F)] * L
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * C
    return mats, cfg.vocab_size * C + head + (2 * L + 1) * C


def llama_matrices(d_model: int, n_layer: int, d_ff: int, vocab: int) -> tuple[list[tuple[int, int]], int]:
    """LLaMA's linears per layer (q, k, v, o; gate, up, down) and its other parameters: embedding, untied LM head
    (both kept in 16-bit, as QLoRA does) and RMSNorm gains (2 per layer + the final one)."""
    mats = [(d_model, d_model)] * (4 * n_layer) + [(d_ff, d_model), (d_ff, d_model), (d_model, d_ff)] * n_layer
    return mats, 2 * vocab * d_model + (2 * n_layer + 1) * d_model
