"""`quantize_model`: put a model's Linear layers in NF4 in place, the step before `get_peft_model` in QLoRA.

    model = load_base_model().model
    quantize_model(model, BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_use_double_quant=True))
    peft = get_peft_model(model, LoraConfig(...))      # LoRA on the 4-bit layers: QLoRA

What is quantized: every Linear, except those whose name is in `llm_int8_skip_modules` (default
["lm_head"]). In minipeft's GPT that is every matrix of the blocks (attention q, k, v, out and the MLP's
fc1, fc2). The token embedding, which the tied LM head reuses, is an Embedding and stays float32, as do
the LayerNorms and biases: QLoRA quantizes the linear layers and keeps embeddings and the head in
higher precision.
"""

from __future__ import annotations

import numpy as np

from minipeft.backend import to_numpy
from minipeft.nn.layers import Linear
from minipeft.nn.module import Module, Parameter
from minipeft.quant.config import BitsAndBytesConfig, qlora_config
from minipeft.quant.linear4bit import Linear4bit


def quantizable_paths(model: Module, config: BitsAndBytesConfig) -> list[str]:
    """Paths of the float Linear layers quantize_model(model, config) replaces."""
    return [p for p, m in model.named_modules() if p and type(m) is Linear
            and p.rsplit(".", 1)[-1] not in config.skip_modules]


def quantize_model(model: Module, config: BitsAndBytesConfig | None = None) -> Module:
    """Replace each float Linear (see the module docstring) by a Linear4bit, in place; returns the model.

    config None: QLoRA's recipe (NF4, blocks of 64, double quantization in blocks of 256, float32 compute).
    Layers already in 4 bits are left as they are, so this also re-quantizes the float layers a
    merge_and_unload() produced. Every layer is checked before any is replaced: no half-quantized model.
    """
    if not isinstance(model, Module):
        raise TypeError(f"quantize_model: model must be a minipeft Module such as GPT(GPTConfig(...)), got "
                        f"{type(model).__name__}")
    config = qlora_config() if config is None else config
    if not isinstance(config, BitsAndBytesConfig):
        raise TypeError(f"quantize_model: config must be a BitsAndBytesConfig, got {type(config).__name__}")
    # an adapter layer (a BaseTunerLayer) is known by the attribute every one has: quant sits below peft, which
    # builds QLoRA on it, so it does not import peft
    if any(hasattr(m, "adapter_layer_names") for _, m in model.named_modules()):
        raise ValueError("quantize_model: this model already holds adapter layers; quantize the base model first, "
                         "then call get_peft_model (QLoRA's order), or merge_and_unload() and quantize the result")
    _check_same_format(model, config)
    paths = quantizable_paths(model, config)
    for path in paths:   # check every shape first
        m = model.get_submodule(path)
        n = m.in_features * m.out_features
        if n % config.blocksize:
            raise ValueError(f"quantize_model: {path} has {n} weights ({m.out_features}x{m.in_features}), which "
                             f"blocksize {config.blocksize} does not divide; choose a blocksize that divides it or "
                             f"add {path.rsplit('.', 1)[-1]!r} to llm_int8_skip_modules")
    dt = config.compute_dtype
    for path in paths:
        m = model.get_submodule(path)
        if m.weight.dtype != dt:
            m = _cast(m, dt)
        model.set_submodule(path, Linear4bit.from_linear(m, config.blocksize, config.bnb_4bit_use_double_quant,
                                                         config.nested_blocksize))
    model.quantization_config = config
    return model


def _check_same_format(model: Module, config: BitsAndBytesConfig) -> None:
    """Refuse a config whose 4-bit format differs from the layers already quantized: they would keep theirs while
    model.quantization_config claimed the new one."""
    want = {"blocksize": config.blocksize, "double_quant": config.bnb_4bit_use_double_quant,
            "nested_blocksize": config.nested_blocksize, "compute_dtype": np.dtype(config.compute_dtype).name}
    for path, m in quantized_layers(model).items():
        have = {"blocksize": m.blocksize, "double_quant": m.double_quant, "nested_blocksize": m.nested_blocksize,
                "compute_dtype": np.dtype(m.compute_dtype).name}
        diff = {k: (have[k], want[k]) for k in want if have[k] != want[k]
                and not (k == "nested_blocksize" and not (have["double_quant"] or want["double_quant"]))}
        if diff:
            raise ValueError(f"quantize_model: {path} is already in 4 bits with "
                             + ", ".join(f"{k}={v[0]!r}" for k, v in diff.items())
                             + ", but the config asks for " + ", ".join(f"{k}={v[1]!r}" for k, v in diff.items())
                             + "; a quantized layer is not quantized again. Pass the config it was quantized with, "
                             "or dequantize_model(model) first to quantize every layer anew")


def _cast(m: Linear, dtype) -> Linear:
    """A shallow stand-in of m with its weight and bias in dtype (m itself is not changed)."""
    out = Linear.__new__(Linear)
    out.in_features, out.out_features = m.in_features, m.out_features
    out.weight = Parameter(m.weight.data.astype(dtype), requires_grad=m.weight.requires_grad)
    out.bias = None if m.bias is None else Parameter(m.bias.data.astype(dtype), requires_grad=m.bias.requires_grad)
    return out


def dequantize_model(model: Module) -> Module:
    """Replace every Linear4bit by a float Linear of its dequantized weight, in place (transformers' dequantize())."""
    for path, m in list(model.named_modules()):
        if isinstance(m, Linear4bit):
            model.set_submodule(path, m.to_linear())
    if hasattr(model, "quantization_config"):
        del model.quantization_config
    return model


def quantized_layers(model: Module) -> dict[str, Linear4bit]:
    """{path: layer} of every Linear4bit in the model."""
    return {p: m for p, m in model.named_modules() if isinstance(m, Linear4bit)}


def is_quantized(model: Module) -> bool:
    return any(isinstance(m, Linear4bit) for _, m in model.named_modules())


def quantization_error(model: Module, reference: Module) -> dict[str, float]:
    """Weight error statistics of a quantized model against the float model it came from (same module paths).

    Over every quantized weight: mean |w - w_hat|, RMS error, max |w - w_hat| and the error's RMS relative
    to the weights' RMS.
    """
    sums = np.zeros(4)   # sum |e|, sum e^2, sum w^2, count
    worst = 0.0
    for path, layer in quantized_layers(model).items():
        w = np.asarray(to_numpy(reference.get_submodule(path).weight.data), dtype=np.float64)
        e = w - np.asarray(to_numpy(layer.dequantize()), dtype=np.float64)
        sums += [np.abs(e).sum(), (e**2).sum(), (w**2).sum(), e.size]
        worst = max(worst, float(np.abs(e).max()))
    if sums[3] == 0:
        raise ValueError("quantization_error: the model holds no Linear4bit layer; quantize_model() it first")
    return {"mean_abs": sums[0] / sums[3], "rms": float(np.sqrt(sums[1] / sums[3])), "max_abs": worst,
            "relative_rms": float(np.sqrt(sums[1] / sums[2]))}
