"""Predict a training step's memory for a minipeft GPT from its shapes alone, array by array.

What the forward pass leaves alive for the backward is (a) what each op saves on the tape (a layer norm's
normalized input xhat, attention's head copies and softmax blocks, GELU's p, LoRA's x A^T) and (b) every op
output that feeds a recorded op, because a tape node holds its input tensors until the step's graph is
dropped. An op is recorded only when one of its inputs needs a gradient, so below the first trainable
parameter nothing is kept. Per block, with N = B T tokens, C = d_model, F = d_ff, for full fine-tuning:

    residual stream in (input of ln_1 and of the first residual add)           1 N C
    ln_1: output, xhat                                                         2 N C
    q, k, v projections (inputs of rotary, of attention), rotated q and k      5 N C
    attention: q, k, v head copies, its output and that output merged          5 N C
               + its unnormalized softmax, in causal blocks of 32 queries      B H sum(n e) + row sums B H T
    out_proj output, first residual add                                        2 N C
    ln_2: output, xhat                                                         2 N C
    fc1 output, GELU's p and output                                            3 N F
    fc2 output                                                                 1 N C
    (the second residual add is the next block's "residual stream in")

then ln_f (2 N C) and the loss: the N_t rows that have a target (N_t C) and two numbers per row (2 N_t: the row
max and the softmax's row sum). The head and the loss run together in chunks of rows (ops.linear_cross_entropy).
While all N_t rows fit one chunk (ops.head_loss.CHUNK_BYTES: every batch of the mini GPT) the fast path keeps that
chunk's exp(z - m) for the backward (N_t V) and turns it into its gradient in place; with several chunks nothing
(N_t, V)-sized outlives the forward and the backward forms one chunk at a time (rows per chunk x V). The peak adds
the head's backward: that chunk, the rows' gradient dh and the product it is copied from (2 N_t C), and, when the
head trains (full fine-tuning), its weight's gradient (V C). With many small chunks another layer's backward
temporary can be larger, which this does not model.

The Llama decoder (`LlamaConfig`: RMSNorm, rotary q and k, grouped-query attention, the gated MLP) follows the same
rule; its table, its head + loss and its peak are in memory_predict_llama.py.

This is the accounting of the fast ops (the default; `minipeft.set_fast_ops(False)` runs the reference ops,
which keep the whole (T, T) attention matrix instead of its causal blocks). Methods predicted: full
fine-tuning and LoRA (any targets, layers, rank and dropout; on a 4-bit base the weights are counted as
QLoRA holds them). `measure_step` reads the same components from a real step; tests hold the two together.
"""

from __future__ import annotations

from minipeft.memory import StepMemory
from minipeft.nn.gpt import GPTConfig
from minipeft.nn.llama import LlamaConfig
from minipeft.ops.head_loss import rows_per_chunk
from minipeft.peft.tuners.lora.config import LoraConfig
from minipeft.peft.tuners.targets import ALL_LINEAR, layer_index, matches
from minipeft.quant.config import BitsAndBytesConfig
from minipeft.quant.storage import bytes_from_shapes, gpt_matrices, llama_config_matrices
from minipeft.workshop.compare.memory_predict_llama import LLAMA_LINEARS, llama_lora_targets, llama_step
from minipeft.workshop.fast.attention import BLOCK_SIZE

LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2")


def _check_lora(lora: LoraConfig) -> None:
    """Refuse the LoraConfig fields whose arrays the prediction does not count."""
    unsupported = [f for f, v in (("bias", lora.bias != "none"), ("modules_to_save", lora.modules_to_save),
                                  ("rank_pattern", lora.rank_pattern)) if v]
    if unsupported:
        raise ValueError(f"predict_step: LoraConfig fields {unsupported} are not modelled; predict with their "
                         "defaults, or measure the step with minipeft.memory.measure_step")


def _lora_targets(cfg: GPTConfig, lora: LoraConfig) -> dict[str, tuple[int, int]]:
    """{path: (out, in)} of the block linears the LoRA config adapts."""
    C, F = cfg.d_model, cfg.d_ff
    shapes = {"attn.q_proj": (C, C), "attn.k_proj": (C, C), "attn.v_proj": (C, C), "attn.out_proj": (C, C),
              "mlp.fc1": (F, C), "mlp.fc2": (C, F)}
    out = {}
    for i in range(cfg.n_layer):
        for name, shape in shapes.items():
            path = f"blocks.{i}.{name}"
            hit = lora.target_modules == ALL_LINEAR or matches(path, lora.target_modules)
            if hit and (lora.layers_to_transform is None or layer_index(path) in lora.layers_to_transform):
                out[path] = shape
    if not out:
        raise ValueError(f"predict_step: LoRA target_modules={lora.target_modules!r} adapt no block linear")
    return out


def _score_elements(B: int, H: int, T: int) -> int:
    """Elements of the causal softmax blocks the fast attention keeps: B H sum over query blocks of n e."""
    return B * H * sum((min(T, i0 + BLOCK_SIZE) - i0) * min(T, i0 + BLOCK_SIZE) for i0 in range(0, T, BLOCK_SIZE))


def _activations(cfg: GPTConfig, B: int, T: int, n_targets: int, full: bool, lora: dict, r: int, dropout: float,
                 quantized: bool, b: int) -> int:
    """Bytes alive after the forward (module docstring): each array counted once, if a recorded op keeps it."""
    N, C, F, H = B * T, cfg.d_model, cfg.d_ff, cfg.n_head
    u, f, norm = N * C * b, N * F * b, N * C * b + N * b             # (N, C), (N, F), layer norm's xhat + rstd
    attention = 4 * u + (_score_elements(B, H, T) + B * H * T) * b  # head copies of q, k, v, output; blocks, 1/sums
    total = 0

    def recorded(name: str, in_grad: bool) -> bool:
        """A block linear is recorded when its input needs a gradient or it trains; adds LoRA's saved arrays."""
        nonlocal total
        if name in lora:
            d_out, k = lora[name]
            total += N * r * b                                      # s x A^T: dB's input
            if dropout:
                total += 2 * N * k * b                              # the dropout mask and the dropped x
            elif not quantized:
                total += d_out * k * b                              # W0 + s B A, kept for dx (a 4-bit base
            #                                                         dequantizes W0 again in the backward instead)
            return True
        return in_grad or full

    rope = cfg.position_embedding == "rope"
    if full and not rope:
        total += u + T * C * b                                      # wte(ids) and wpe(pos): the sum's inputs
    g = full                                                        # the residual stream needs a gradient
    for i in range(cfg.n_layer):
        q, k, v, o, fc1, fc2 = (f"blocks.{i}.{n}" for n in LINEARS)
        ln1 = g or full                                             # recorded: its input or weights need grad
        q, k, v = (recorded(n, ln1) for n in (q, k, v))
        att = q or k or v
        o = recorded(o, att)
        add1 = g or o
        ln2 = add1 or full
        h = recorded(fc1, ln2)
        o2 = recorded(fc2, h)
        add2 = add1 or o2
        total += u * (ln1 or add1)                                  # the residual stream in: both read it
        total += norm * ln1 + u * (q or k or v)                     # ln_1's xhat; its output, read by q, k, v
        total += (u * q + u * k) * rope                             # q, k: the rotary ops' inputs
        total += (3 * u + attention) * att                          # rotated q, k and v; what attention saves
        total += u * o + u * add1                                   # merged attention output; out_proj's output
        total += u * (ln2 or add2) + norm * ln2 + u * h             # x + attn; ln_2's xhat; its output
        total += 2 * f * h + f * o2                                 # fc1's output, GELU's p; GELU's output
        total += u * add2                                           # fc2's output
        g = add2
    total += u + norm + u                                           # the last residual, ln_f's xhat, its output
    total += n_targets * C * b if n_targets < N else 0             # the rows that have a target (a copy)
    total += 2 * n_targets * b                                      # per row: the max and the softmax's sum
    return total


def predict_step(config: GPTConfig | LlamaConfig, method: str | LoraConfig = "full", *, batch_size: int, seq_len: int,
                 n_targets: int | None = None, quantization: BitsAndBytesConfig | None = None,
                 dtype_bytes: int = 4) -> StepMemory:
    """The components of one AdamW training step (see StepMemory) predicted from shapes.

    config: a GPTConfig or a LlamaConfig. method: "full" (every parameter trains) or a LoraConfig;
    quantization: the base's linears held in 4 bits (QLoRA; with LoRA only). n_targets: positions with a target
    (default every one; in fine-tuning, the completion tokens). dtype_bytes: 4 for float32, 8 for float64.
    """
    if not isinstance(config, (GPTConfig, LlamaConfig)):
        raise TypeError(f"predict_step: config must be a GPTConfig or a LlamaConfig, got {type(config).__name__}")
    llama = isinstance(config, LlamaConfig)
    if method != "full" and not isinstance(method, LoraConfig):
        raise ValueError(f"predict_step: method must be 'full' or a LoraConfig, got {method!r}; measure other "
                         "methods with minipeft.memory.measure_step")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"predict_step: {name} must be an int >= 1, got {v!r}")
    if not llama and config.dropout:
        raise ValueError(f"predict_step: dropout={config.dropout} is not modelled (its masks add arrays); predict "
                         "with dropout=0 or measure the step with minipeft.memory.measure_step")
    if seq_len > config.context_length:
        raise ValueError(f"predict_step: seq_len={seq_len} exceeds the model's context_length={config.context_length}")
    n_targets = batch_size * seq_len if n_targets is None else n_targets
    if not 1 <= n_targets <= batch_size * seq_len:
        raise ValueError(f"predict_step: n_targets must be in [1, batch_size * seq_len = {batch_size * seq_len}], "
                         f"got {n_targets}")
    if quantization is not None and method == "full":
        raise ValueError("predict_step: a 4-bit base cannot be fully fine-tuned (its weights have no gradient); "
                         "pass a LoraConfig with quantization (QLoRA)")
    if method != "full":
        _check_lora(method)
    quantized = quantization is not None
    if quantized:
        names = {n.rsplit(".", 1)[1] for n in (LLAMA_LINEARS if llama else LINEARS)}
        floats = sorted(names & set(quantization.skip_modules))
        if floats:
            raise ValueError(f"predict_step: llm_int8_skip_modules keeps {floats} in float, which is not modelled "
                             "(every layer linear is counted in 4 bits); measure the step with "
                             "minipeft.memory.measure_step")
    b = dtype_bytes
    mats, other = llama_config_matrices(config) if llama else gpt_matrices(config)
    base_params = sum(r * c for r, c in mats) + other
    targets = llama_lora_targets if llama else _lora_targets
    lora = {} if method == "full" else targets(config, method)
    r = 0 if method == "full" else method.r
    trainable = base_params if method == "full" else sum(r * (o + i) for o, i in lora.values())
    if quantization is None:
        weights = base_params * b
    else:
        weights = bytes_from_shapes(mats, other, quantized=True, blocksize=quantization.blocksize,
                                    double_quant=quantization.bnb_4bit_use_double_quant,
                                    nested_blocksize=quantization.nested_blocksize, float_bytes=b)
    if method != "full":
        weights += trainable * b
    dropout = 0.0 if method == "full" else method.lora_dropout
    full = method == "full"
    if llama:
        acts, peak = llama_step(config, batch_size, seq_len, n_targets, full, lora, r, dropout, quantized, b,
                                trainable * b)
        return StepMemory(weights=weights, gradients=trainable * b, optimizer_state=2 * trainable * b,
                          activations=acts, peak=peak)
    acts = _activations(config, batch_size, seq_len, n_targets, full, lora, r, dropout, quantized, b)
    V, C = config.vocab_size, config.d_model
    rows = rows_per_chunk(V, b)
    kept = n_targets * V if n_targets <= rows else 0        # one chunk: its exp(z - m), kept for the backward
    acts += kept * b
    head_backward = (0 if kept else rows * V) + 2 * n_targets * C + (V * C if method == "full" else 0)
    return StepMemory(weights=weights, gradients=trainable * b, optimizer_state=2 * trainable * b, activations=acts,
                      peak=acts + head_backward * b)
