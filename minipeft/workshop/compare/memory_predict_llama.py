"""The Llama decoder's share of `predict_step` (memory_predict.py): its linears, what its forward keeps, its peak.

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
keep what the GPT's do (memory_predict.py). Under LoRA a layer linear is recorded only from the first adapter on, as
in the GPT, and an adapted linear adds LoRA's saved arrays: s x A^T (N r); with dropout its mask and the dropped x
(2 N k); without, on a float base, the folded W0 + s B A (d k) when the fast op folds (N (d + k) >= d k). As for the
GPT, this is the fast ops' accounting, in arrays: the tape's Python objects (tens of KB) are left out.

The peak is the larger of two moments of the backward. At its start, the head's: beside the activations, a chunk of
the logits gradient (unless the one chunk was kept), the rows' gradient dh and the product it is copied from
(2 N_t C), or, when the head trains, dh and the head's dW (N_t C + V C: the product is gone by then). At its end,
in full fine-tuning: the tape has dropped every op's saved arrays but still holds the op outputs that are inputs of
recorded ops, every gradient is made, and two (V, C) arrays more than the weights' gradients are alive (three with
a tied head; see llama_step). SmolLM2-135M's full step at 4 x 128 tokens is predicted to peak there (its gradients
alone are 513 MiB); the test model's measured step peaks there at 8 x 32 tokens and at the head at 8 x 64. Other
moments (a layer's backward temporaries: the grouped attention's three (B, H, T, T) blocks) stay below these two at
those shapes and are not modelled.
"""

from __future__ import annotations

from minipeft.nn.llama import LlamaConfig
from minipeft.ops.head_loss import rows_per_chunk
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


def _layers(cfg: LlamaConfig, B: int, T: int, full: bool, lora: dict, r: int, dropout: float, quantized: bool,
            b: int) -> tuple[int, int]:
    """(held, saved): bytes of the op outputs the layers and the final norm keep as inputs of recorded ops, and of
    what those ops save besides (module docstring), each array once. The tape drops an op's saved arrays when its
    backward has run, its inputs only with the graph."""
    N, C, F = B * T, cfg.d_model, cfg.d_ff
    Ckv = cfg.n_kv_head * cfg.head_dim
    u, ukv, f, norm = N * C * b, N * Ckv * b, N * F * b, N * C * b + N * b   # RMSNorm saves xhat and rstd
    angles = T * cfg.head_dim * b                                   # a rotary op's cos and sin, (T, hs/2) each
    attention = _attention_bytes(cfg, B, T, b)
    held = saved = 0

    def recorded(path: str, in_grad: bool) -> bool:
        """A layer linear is recorded when its input needs a gradient or it trains; adds LoRA's saved arrays."""
        nonlocal saved
        if path in lora:
            d_out, k = lora[path]
            saved += N * r * b                                      # s x A^T: dB's input
            if dropout:
                saved += 2 * N * k * b                              # the dropout mask and the dropped x
            elif not quantized and N * (d_out + k) >= d_out * k:    # the fast op folds only then (fast/lora.py)
                saved += d_out * k * b                              # W0 + s B A, kept for dx (a 4-bit base
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
        held += u * (ln1 or add1)                                   # the residual stream in: both read it
        saved += norm * ln1                                         # input_layernorm's xhat and rstd
        held += u * att + u * q + ukv * k                           # its output; q, k: the rotary ops' inputs
        saved += angles * q + angles * k                            # the rotary ops' cos and sin
        held += (u + 2 * ukv) * att                                 # rotated q, k and v
        saved += attention * att                                    # what attention saves
        held += u * o + u * add1                                    # merged attention output; o_proj's output
        held += u * (ln2 or add2) + u * glu                         # x + attn; the norm's output
        saved += norm * ln2                                         # the norm's xhat and rstd
        held += 2 * f * glu + f * down                              # gate, up (swiglu's inputs); its output
        saved += f * glu                                            # sigmoid(gate)
        held += u * add2                                            # down_proj's output
        g = add2
    return held + 2 * u, saved + norm                               # the last residual, norm's output; its xhat


def llama_step(cfg: LlamaConfig, B: int, T: int, n_targets: int, full: bool, lora: dict, r: int, dropout: float,
               quantized: bool, b: int, gradients: int) -> tuple[int, int]:
    """(activations, peak) of a Llama training step in bytes (module docstring); gradients: their bytes."""
    N, C, V = B * T, cfg.d_model, cfg.vocab_size
    held, saved = _layers(cfg, B, T, full, lora, r, dropout, quantized, b)
    held += n_targets * C * b if n_targets < N else 0              # the rows that have a target (a copy)
    saved += 2 * n_targets * b                                      # per row: the max and the softmax's sum
    rows = rows_per_chunk(V, b)
    kept = n_targets * V if n_targets <= rows else 0                # one chunk: its exp(z - m), kept for the backward
    activations = held + saved + kept * b
    # the head's backward: a chunk of the logits gradient (the kept one, or one formed again), dh = dz W copied
    # into the rows' gradient, then a trained head's dW (V, C), formed once the product is gone
    head = (0 if kept else rows * V) + n_targets * C + max(n_targets * C, V * C if full else 0)
    peak = activations + head * b
    if full:
        # the end of the backward: every saved array is gone, every op input is still held, every gradient is
        # made, and (V, C) arrays beyond the weights' own gradients are alive at the last leaf's copy (the tape
        # copies a leaf's gradient out of its pending sum): the embedding's dW, which the walk's loop still holds,
        # and the last leaf's pending gradient; tied, also the head's dW that the embedding's was added to
        peak = max(peak, held + gradients + (3 if cfg.tie_embeddings else 2) * V * C * b)
    return activations, peak
