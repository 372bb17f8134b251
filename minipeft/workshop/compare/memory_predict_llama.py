"""The Llama decoder's share of `predict_step` (memory_predict.py): its block linears and what its forward keeps.

The rule is the GPT's (memory_predict.py's docstring): what each recorded op saves, plus every op output that feeds a
recorded op. A Llama block (nn/llama.py) differs in its ops: RMSNorm saves xhat and rstd as layer norm does; q and k
are turned by rotary ops, each keeping its (T, hs/2) cos and sin; the gated MLP's swiglu saves its two inputs and
sigmoid(gate); k_proj and v_proj are Ckv = n_kv_head * head_dim wide. Per block, with N = B T tokens, C = d_model,
F = d_ff, H = n_head, for full fine-tuning:

    residual stream in (input of input_layernorm and of the first residual add)       1 N C
    input_layernorm: output, xhat (+ rstd, N)                                         2 N C
    q_proj, k_proj outputs (the rotary ops' inputs) + each rotary's cos and sin       N C + N Ckv + 2 T hs
    rotated q, rotated k, v_proj's output (attention's inputs)                        N C + 2 N Ckv
    attention, grouped (n_kv_head < n_head; the reference op, the fast one has no
               groups): its copies of q, k, v as heads, and the whole softmax P       N C + 2 N Ckv + B H T T
    attention, n_kv_head = n_head (the fast op): q, k, v head copies and its output  4 N C
               + its unnormalized softmax, in causal blocks of 32 queries            B H sum(n e) + row sums B H T
    its output merged (o_proj's input), o_proj's output                                2 N C
    x + attn (input of post_attention_layernorm and of the second add)                1 N C
    post_attention_layernorm: output, xhat (+ rstd)                                   2 N C
    gate_proj, up_proj outputs, sigmoid(gate) (what swiglu saves), swiglu's output    4 N F
    down_proj output                                                                  1 N C

Grouped-query attention never copies K and V per query head: a group's G query heads are stacked as G T rows that
meet their key/value head once, so P is (B, n_kv_head, G T, T), B H T T numbers. The final norm and the head + loss
are the GPT's (memory_predict.py). Under LoRA a block linear is recorded only from the first adapter on, as in the
GPT, and an adapted linear adds LoRA's saved arrays.
"""

from __future__ import annotations

from minipeft.nn.llama import LlamaConfig
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.targets import ALL_LINEAR, layer_index, matches
from minipeft.workshop.fast.attention import BLOCK_SIZE

LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj")


def llama_linear_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    """{name in a layer: (out, in)} of a Llama layer's linears (nn/llama.py)."""
    C, Ckv, F = cfg.d_model, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    return dict(zip(LLAMA_LINEARS, [(C, C), (Ckv, C), (Ckv, C), (C, C), (F, C), (F, C), (C, F)], strict=True))


def llama_lora_targets(cfg: LlamaConfig, lora: LoraConfig) -> dict[str, tuple[int, int]]:
    """{path: (out, in)} of the layer linears the LoRA config adapts (paths as in LlamaForCausalLM)."""
    if not cfg.tie_embeddings and lora.target_modules != ALL_LINEAR and matches("lm_head", lora.target_modules):
        raise ValueError(f"predict_step: LoRA target_modules={lora.target_modules!r} adapt lm_head, whose head then "
                         "runs unchunked; that is not modelled: measure the step with minipeft.memory.measure_step")
    out = {}
    for i in range(cfg.n_layer):
        for name, shape in llama_linear_shapes(cfg).items():
            path = f"model.layers.{i}.{name}"
            hit = lora.target_modules == ALL_LINEAR or matches(path, lora.target_modules)
            if hit and (lora.layers_to_transform is None or layer_index(path) in lora.layers_to_transform):
                out[path] = shape
    if not out:
        raise ValueError(f"predict_step: LoRA target_modules={lora.target_modules!r} adapt no layer linear of the "
                         f"Llama (its linears: {', '.join(n.rsplit('.', 1)[1] for n in LLAMA_LINEARS)})")
    return out


def _attention_bytes(cfg: LlamaConfig, B: int, T: int, b: int) -> int:
    """What the attention op saves, beyond its inputs and output (see the module docstring)."""
    N, C, H, Ckv = B * T, cfg.d_model, cfg.n_head, cfg.n_kv_head * cfg.head_dim
    if cfg.n_kv_head < H:                                       # the reference op: head copies, the whole P
        return (N * C + 2 * N * Ckv + B * H * T * T) * b
    blocks = sum((min(T, i0 + BLOCK_SIZE) - i0) * min(T, i0 + BLOCK_SIZE) for i0 in range(0, T, BLOCK_SIZE))
    return (4 * N * C + B * H * blocks + B * H * T) * b            # the fast op (as the GPT's)


def llama_activations(cfg: LlamaConfig, B: int, T: int, full: bool, lora: dict, r: int, dropout: float,
                      quantized: bool, b: int) -> int:
    """Bytes the layers and the final norm keep alive after the forward (module docstring), each array once."""
    N, C, F = B * T, cfg.d_model, cfg.d_ff
    Ckv = cfg.n_kv_head * cfg.head_dim
    u, ukv, f, norm = N * C * b, N * Ckv * b, N * F * b, N * C * b + N * b   # RMSNorm: xhat + rstd
    angles = T * cfg.head_dim * b                                   # a rotary op's cos and sin, (T, hs/2) each
    attention = _attention_bytes(cfg, B, T, b)
    total = 0

    def recorded(path: str, in_grad: bool) -> bool:
        """A layer linear is recorded when its input needs a gradient or it trains; adds LoRA's saved arrays."""
        nonlocal total
        if path in lora:
            d_out, k = lora[path]
            total += N * r * b                                      # s x A^T: dB's input
            if dropout:
                total += 2 * N * k * b                              # the dropout mask and the dropped x
            elif not quantized and N * (d_out + k) >= d_out * k:    # the fast op folds only then (fast/lora.py)
                total += d_out * k * b                              # W0 + s B A, kept for dx (a 4-bit base
            #                                                         dequantizes W0 again in the backward instead)
            return True
        return in_grad or full

    g = full                                                        # the residual stream needs a gradient
    for i in range(cfg.n_layer):
        q, k, v, o, gate, up, down = (f"model.layers.{i}.{n}" for n in LLAMA_LINEARS)
        ln1 = g or full                                             # recorded: its input or weight needs grad
        q, k, v = (recorded(n, ln1) for n in (q, k, v))
        att = q or k or v
        o = recorded(o, att)
        add1 = g or o
        ln2 = add1 or full
        gate, up = recorded(gate, ln2), recorded(up, ln2)
        glu = gate or up                                            # swiglu is recorded
        down = recorded(down, glu)
        add2 = add1 or down
        total += u * (ln1 or add1)                                  # the residual stream in: both read it
        total += norm * ln1 + u * att                               # input_layernorm's xhat; its output
        total += (u + angles) * q + (ukv + angles) * k              # q, k: the rotary ops' inputs, cos, sin
        total += (u + 2 * ukv + attention) * att                    # rotated q, k and v; what attention saves
        total += u * o + u * add1                                   # merged attention output; o_proj's output
        total += u * (ln2 or add2) + norm * ln2 + u * glu           # x + attn; the norm's xhat; its output
        total += 3 * f * glu + f * down                             # gate, up, sigmoid(gate); swiglu's output
        total += u * add2                                           # down_proj's output
        g = add2
    return total + u + norm + u                                     # the last residual, norm's xhat, its output
