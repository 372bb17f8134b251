"""Training memory of models too large to run here, from their dimensions alone: why full fine-tuning of a
7B or 65B model needs a cluster while LoRA and QLoRA fit on one GPU.

Bytes per parameter, in mixed precision as the LoRA and QLoRA papers train:

    full fine-tuning   16-bit weight (2) + 16-bit gradient (2) + AdamW's m and v in float32 (8)  = 12 B
                       (with a float32 master copy of the weights, as some mixed-precision set-ups keep: 16 B)
    LoRA               the frozen base: its 16-bit weight only (2 B); no gradient, no optimizer state.
                       each adapter parameter: 2 + 2 + 8 = 12 B, as full fine-tuning's
    QLoRA              the frozen base's linears in NF4 with double quantization (4.127 bits each, embedding
                       and LM head kept in 16 bits, as QLoRA keeps them); the adapters as LoRA's

Activations, what the backward needs from the forward (16-bit, batch B, sequence T, width d, H heads):
Korthikanti et al. (2022, "Reducing activation recomputation", eq. 2) count B T d (34 + 5 H T / d) bytes per
block for a GPT block (attention scores included, no recomputation). With gradient checkpointing, as QLoRA
trains, only each block's input is kept (2 B T d bytes per block) and one block at a time is recomputed on the
way back. A SwiGLU block (LLaMA) keeps somewhat different intermediates; the same formula is used as an
estimate. The weights, gradients and optimizer state are exact for the shapes; activations are that estimate.

`LARGE_MODELS` holds published shapes; `weights_bytes` the weights in one format; `large_model_memory` every
component of a fine-tuning method; `PAPER_FIGURES` the numbers the LoRA and QLoRA papers state, for the
tutorial to print beside these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minipeft.quant.storage import bytes_from_shapes

FORMATS = ("fp32", "bf16", "nf4", "nf4+dq")     # weight formats weights_bytes knows
METHODS = ("full", "lora", "qlora")             # fine-tuning methods large_model_memory knows
ADAM_BYTES = 8                                  # AdamW's m and v, float32 each, per trainable parameter
HALF = 2                                        # bytes of a 16-bit (bf16/fp16) number


@dataclass(frozen=True)
class LargeModel:
    """The shape of a decoder-only transformer, enough to count its parameters and bytes."""

    name: str
    d_model: int        # width of the residual stream
    n_layer: int        # transformer blocks
    d_ff: int           # MLP inner width
    vocab: int          # vocabulary size
    n_head: int         # attention heads
    gated: bool         # SwiGLU MLP (gate, up, down: LLaMA) instead of fc1, fc2 (GPT)
    tied: bool = False  # LM head shares the embedding matrix

    def matrices(self) -> dict[str, tuple[int, int]]:
        """One block's linear layers by name, each (out, in)."""
        d, f = self.d_model, self.d_ff
        mats = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d)}
        mlp = {"gate": (f, d), "up": (f, d), "down": (d, f)} if self.gated else {"fc1": (f, d), "fc2": (d, f)}
        return {**mats, **mlp}

    def other_parameters(self) -> int:
        """Everything but the blocks' linears: embedding, untied LM head, norm gains (2 per block + final).

        Biases and learned positions (GPT-3 has both) are left out: under 0.1% of the parameters."""
        return (1 if self.tied else 2) * self.vocab * self.d_model + (2 * self.n_layer + 1) * self.d_model

    def n_params(self) -> int:
        return self.n_layer * sum(r * c for r, c in self.matrices().values()) + self.other_parameters()

    def lora_parameters(self, r: int, targets: tuple[str, ...] | str = "all") -> int:
        """r (in + out) per adapted matrix per block; targets: names of matrices() or "all"."""
        mats = self.matrices()
        names = tuple(mats) if targets == "all" else tuple(targets)
        unknown = [t for t in names if t not in mats]
        if unknown:
            raise ValueError(f"{self.name}: LoRA targets {unknown} are not among its matrices {list(mats)}")
        return self.n_layer * sum(r * (mats[t][0] + mats[t][1]) for t in names)


# Published shapes: LLaMA (Touvron et al., 2023, table 2), GPT-3 (Brown et al., 2020, table 2.1); the 1.3B is
# GPT-3 XL's shape (as OPT-1.3B's), standing for the "1B" class.
LARGE_MODELS: dict[str, LargeModel] = {m.name: m for m in (
    LargeModel("GPT-3 XL 1.3B", 2048, 24, 8192, 50257, 16, gated=False, tied=True),
    LargeModel("LLaMA-7B", 4096, 32, 11008, 32000, 32, gated=True),
    LargeModel("LLaMA-13B", 5120, 40, 13824, 32000, 40, gated=True),
    LargeModel("LLaMA-65B", 8192, 80, 22016, 32000, 64, gated=True),
    LargeModel("GPT-3 175B", 12288, 96, 49152, 50257, 96, gated=False, tied=True),
)}


def weights_bytes(model: LargeModel, fmt: str) -> int:
    """Bytes of the weights in one format: "fp32", "bf16", or the linears in "nf4" / "nf4+dq" (blocks of 64,
    float32 scales, double quantization in blocks of 256) with every other parameter in 16 bits."""
    if fmt not in FORMATS:
        raise ValueError(f"weights_bytes: unknown format {fmt!r}; choose from {list(FORMATS)}")
    mats = list(model.matrices().values()) * model.n_layer
    quantized = fmt.startswith("nf4")
    return bytes_from_shapes(mats, model.other_parameters(), quantized=quantized, double_quant=fmt == "nf4+dq",
                             float_bytes=4 if fmt == "fp32" else HALF)


def activation_bytes(model: LargeModel, batch_size: int, seq_len: int, checkpointing: bool) -> int:
    """16-bit activations kept for the backward (see the module docstring): Korthikanti et al.'s per-block
    count, or with gradient checkpointing each block's input plus one block's worth recomputed."""
    B, T, d, H = batch_size, seq_len, model.d_model, model.n_head
    per_block = B * T * (34 * d + 5 * H * T)                       # = B T d (34 + 5 H T / d)
    return (model.n_layer * HALF * B * T * d + per_block) if checkpointing else model.n_layer * per_block


@dataclass(frozen=True)
class LargeMemory:
    """Bytes of one fine-tuning configuration by component."""

    weights: int            # the base model as held (16-bit, or NF4 + DQ for QLoRA)
    adapters: int           # LoRA's A and B, 16-bit (0 for full fine-tuning)
    gradients: int          # 16-bit, trainable parameters only
    optimizer_state: int    # AdamW's m and v in float32
    activations: int        # see activation_bytes
    trainable: int          # parameters that train

    @property
    def total(self) -> int:
        return self.weights + self.adapters + self.gradients + self.optimizer_state + self.activations

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def large_model_memory(model: LargeModel | str, method: str, *, r: int = 64, targets: tuple[str, ...] | str = "all",
                       batch_size: int = 1, seq_len: int = 512, checkpointing: bool = True) -> LargeMemory:
    """What fine-tuning `model` with `method` ("full", "lora", "qlora") holds, by component (module docstring).

    r and targets apply to LoRA and QLoRA (QLoRA's recipe: r=64 on every linear of every block)."""
    if isinstance(model, str):
        if model not in LARGE_MODELS:
            raise ValueError(f"unknown large model {model!r}; known: {list(LARGE_MODELS)}")
        model = LARGE_MODELS[model]
    if method not in METHODS:
        raise ValueError(f"large_model_memory: unknown method {method!r}; choose from {list(METHODS)}")
    for name, v in (("r", r), ("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"large_model_memory: {name} must be an int >= 1, got {v!r}")
    acts = activation_bytes(model, batch_size, seq_len, checkpointing)
    if method == "full":
        n = model.n_params()
        return LargeMemory(weights_bytes(model, "bf16"), 0, HALF * n, ADAM_BYTES * n, acts, n)
    n = model.lora_parameters(r, targets)
    base = weights_bytes(model, "bf16" if method == "lora" else "nf4+dq")
    return LargeMemory(base, HALF * n, HALF * n, ADAM_BYTES * n, acts, n)


# What the papers state, with where; the tutorial prints each beside this module's figure for the same set-up.
PAPER_FIGURES = {
    "qlora_65b_full_gb": (780, "QLoRA, abstract: 65B in 16 bits needs '>780GB' (GB)"),
    "qlora_65b_qlora_gb": (48, "QLoRA, abstract: QLoRA fits it on 'a single 48GB GPU' (GB)"),
    "lora_175b_full_tb": (1.2, "LoRA, 4.2: GPT-3 175B full fine-tuning VRAM '1.2TB' (TB)"),
    "lora_175b_lora_gb": (350, "LoRA, 4.2: with LoRA r=4 on q and v, '350GB' (GB)"),
    "lora_175b_checkpoint_mb": (35, "LoRA, 4.2: its checkpoint, '350GB to 35MB' (MB)"),
}
