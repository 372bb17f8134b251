"""The PEFT methods on a Llama, where it differs from the GPT: Hugging Face's names and defaults for Llama (IA3's
targets, LoRA's "all-linear"), grouped-query attention (prefix widths), RMSNorm and no biases (selective methods),
layers under `model.layers.N`, QLoRA on its projections, and prompt tuning's TEXT init through any tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import batch, build_llama, logits, snapshot, train_steps

from minipeft import to_numpy
from minipeft.nn.llama import LlamaConfig
from minipeft.peft import (
    BottleneckConfig,
    ConfigError,
    IA3Config,
    LoraConfig,
    LoraLayer,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from minipeft.peft.tuners.bottleneck import BottleneckLayer
from minipeft.peft.tuners.ia3 import IA3Linear
from minipeft.peft.tuners.lora import LoraLinear
from minipeft.peft.tuners.selective import bitfit_config, embeddings_config, last_k_layers_config, layernorm_config
from minipeft.peft.tuners.targets import layer_index
from minipeft.quant import Linear4bit, qlora_config, quantize_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]   # every Linear of a layer


def wrapped(peft, kind) -> list[str]:
    """Paths (inside the base model) of the modules wrapped in a `kind` layer."""
    return [p for p, m in peft.get_base_model().named_modules() if isinstance(m, kind)]


def trainable(peft) -> list[str]:
    return [n for n, p in peft.named_parameters() if p.requires_grad]


def test_layer_index_reads_transformers_layer_paths_and_the_gpts():
    assert layer_index("model.layers.3.self_attn.q_proj") == 3
    assert layer_index("blocks.12.attn.q_proj") == 12
    assert layer_index("model.norm") is None and layer_index("model.embed_tokens") is None


def test_ia3_defaults_on_a_llama_are_hugging_faces_keys_values_and_down_projs_input():
    config = IA3Config()
    peft = get_peft_model(build_llama(0), config)
    assert config.target_modules == ["k_proj", "v_proj", "down_proj"] and config.feedforward_modules == ["down_proj"]
    assert wrapped(peft, IA3Linear) == [f"model.layers.{i}.{p}" for i in range(2)
                                        for p in ("self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")]
    layer = peft.get_base_model().model.layers[0]
    assert layer.mlp.down_proj.is_feedforward["default"] and not layer.self_attn.k_proj.is_feedforward["default"]
    # k and v: n_kv_head * head_dim = 8 outputs each; down_proj: d_ff = 24 inputs
    assert peft.get_nb_trainable_parameters()[0] == 2 * (8 + 8 + 24)


def test_ia3_defaults_equal_hugging_face_peft_s_table_for_llama():
    constants = pytest.importorskip("peft.utils.constants")
    from minipeft.peft.tuners.ia3.config import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS  # noqa: PLC0415
    assert DEFAULT_TARGETS["llama"] == constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["llama"]
    assert DEFAULT_FEEDFORWARD["llama"] == constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING["llama"]


class OtherConfig(LlamaConfig):
    model_type = "mistral-like"          # a model type the defaults tables do not list


def test_a_model_without_a_defaults_entry_asks_for_the_targets_by_name():
    base = build_llama(0)
    base.config = OtherConfig(**base.config.to_dict())
    with pytest.raises(ValueError, match="IA3Config.target_modules is None and there is no default for model_type "
                                         "'mistral-like'.*name the modules explicitly"):
        get_peft_model(base, IA3Config())
    with pytest.raises(ValueError, match="BottleneckConfig.target_modules is None"):
        get_peft_model(base, BottleneckConfig.houlsby(bottleneck_size=2))
    assert get_peft_model(base, IA3Config(target_modules=["k_proj"], feedforward_modules=[])) is not None


def test_lora_q_v_and_all_linear_mean_what_they_mean_in_hugging_face():
    qv = get_peft_model(build_llama(0), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert wrapped(qv, LoraLinear) == [f"model.layers.{i}.self_attn.{p}" for i in range(2)
                                       for p in ("q_proj", "v_proj")]
    # r (in + out): q_proj 16 -> 16, v_proj 16 -> 8 (two key/value heads of 4)
    assert qv.get_nb_trainable_parameters()[0] == 2 * 2 * ((16 + 16) + (16 + 8))
    untied = build_llama(0, tie_embeddings=False)       # a real lm_head Linear, which "all-linear" leaves out
    every = get_peft_model(untied, LoraConfig(r=2, target_modules="all-linear"))
    paths = wrapped(every, LoraLinear)
    assert len(paths) == 2 * 7 and {p.rsplit(".", 1)[-1] for p in paths} == set(PROJ)
    assert "lm_head" not in paths and type(every.get_base_model().lm_head).__name__ == "Linear"


def test_layers_to_transform_and_layers_pattern_name_llama_layers():
    # layers_pattern is Hugging Face's (minipeft reads both families' layer lists): a file may name them
    lora = LoraConfig.from_dict({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [1],
                                 "layers_pattern": "layers"})
    peft = get_peft_model(build_llama(0), lora)
    assert wrapped(peft, LoraLinear) == ["model.layers.1.self_attn.q_proj"]
    ia3 = IA3Config.from_dict({"layers_to_transform": 1, "layers_pattern": ["layers"]})
    assert get_peft_model(build_llama(0), ia3) is not None
    with pytest.raises(ConfigError, match="layers_pattern='h'"):
        LoraConfig.from_dict({"layers_pattern": "h"})
    last = get_peft_model(build_llama(0), last_k_layers_config(1, 2))
    names = trainable(last)
    assert names and all(".model.layers.1." in n for n in names)
    assert len(names) == 7 + 2                           # seven projections and two RMSNorm scales of layer 1


def test_bottleneck_layouts_follow_o_proj_and_down_proj():
    houlsby = get_peft_model(build_llama(0), BottleneckConfig.houlsby(bottleneck_size=2))
    assert wrapped(houlsby, BottleneckLayer) == [f"model.layers.{i}.{p}" for i in range(2)
                                                 for p in ("self_attn.o_proj", "mlp.down_proj")]
    assert houlsby.peft_config["default"].target_modules == ["o_proj", "down_proj"]
    pfeiffer = get_peft_model(build_llama(0), BottleneckConfig.pfeiffer(bottleneck_size=2))
    assert wrapped(pfeiffer, BottleneckLayer) == [f"model.layers.{i}.mlp.down_proj" for i in range(2)]


def test_prefix_tuning_keys_and_values_have_the_kv_heads_width():
    config = PrefixTuningConfig(num_virtual_tokens=3)
    peft = get_peft_model(build_llama(0), config)
    # grouped-query attention: a layer's keys are n_kv_head * head_dim = 2 * 4 = 8 wide, not d_model = 16
    assert (config.token_dim, config.num_attention_heads, config.num_layers) == (8, 2, 2)
    assert config.encoder_hidden_size == 8
    assert peft.get_nb_trainable_parameters()[0] == 3 * 2 * 2 * 8
    projected = get_peft_model(build_llama(0), PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True))
    # E (n, d), Linear(d, h) and Linear(h, 2 L d), h = d = 8: 24 + (64 + 8) + (8 * 32 + 32)
    assert projected.get_nb_trainable_parameters()[0] == 3 * 8 + (8 * 8 + 8) + (8 * 32 + 32)
    with pytest.raises(ConfigError, match="token_dim=16 does not fit the model, which has 8"):
        get_peft_model(build_llama(0), PrefixTuningConfig(num_virtual_tokens=3, token_dim=16))


def test_prefix_width_is_what_hugging_face_fills_in_for_grouped_query_attention():
    transformers = pytest.importorskip("transformers")
    other = pytest.importorskip("peft.utils.other")
    import peft as hf_peft  # noqa: PLC0415
    base = build_llama(0)
    hf = hf_peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    other._prepare_prompt_learning_config(hf, transformers.LlamaConfig(**base.config.to_hf_dict()))
    ours = PrefixTuningConfig(num_virtual_tokens=3)
    ours.fit_to(base)
    for name in ("token_dim", "num_attention_heads", "num_layers", "encoder_hidden_size"):
        assert getattr(ours, name) == getattr(hf, name), name


def test_bitfit_on_a_llama_is_refused_naming_the_missing_biases():
    with pytest.raises(ValueError, match=r"asks for the bias terms \(BitFit\), but this LlamaForCausalLM has no bias "
                                         r"parameter.*trainable_types=\['norm'\]"):
        get_peft_model(build_llama(0), bitfit_config())


def test_norm_tuning_selects_every_rmsnorm_scale_and_trains_them():
    ids, tgt = batch(0)
    peft = get_peft_model(build_llama(0), layernorm_config())
    norms = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
    assert sorted(trainable(peft)) == sorted(f"base_model.model.{p}.selective_weight.default"
                                             for p in [*norms, "model.norm"])
    assert peft.get_nb_trainable_parameters()[0] == 5 * 16
    base_before = snapshot(peft.get_base_model(), skip="selective_")
    losses = train_steps(peft, ids, tgt, steps=3, lr=1e-1)
    assert losses[-1] < losses[0]
    after = snapshot(peft.get_base_model(), skip="selective_")
    assert all(np.array_equal(base_before[k], after[k]) for k in base_before)   # the originals stay untouched


def test_embedding_tuning_selects_embed_tokens_which_the_tied_head_reads():
    ids, _ = batch(0)
    peft = get_peft_model(build_llama(0), embeddings_config())
    assert trainable(peft) == ["base_model.model.model.embed_tokens.selective_weight.default"]
    (table,) = peft.base_model.adapter_parameters("default").values()
    table.data = table.data * 3
    plain = build_llama(0)
    plain.model.embed_tokens.weight.data = plain.model.embed_tokens.weight.data * 3   # lookup and head both
    np.testing.assert_array_equal(logits(peft, ids), logits(plain, ids))


def test_qlora_on_a_llama_quantizes_every_projection_and_trains():
    ids, tgt = batch(1)
    base = quantize_model(build_llama(0), qlora_config(nested_blocksize=2))
    quantized = [p for p, m in base.named_modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 2 * 7
    codes = {p: to_numpy(base.get_submodule(p).weight.data).copy() for p in quantized}
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    assert len(wrapped(peft, LoraLayer)) == 2 * 7        # LoraLinear4bit, LoRA's layer on a 4-bit base
    start = logits(peft, ids)
    losses = train_steps(peft, ids, tgt, steps=4)
    assert losses[-1] < losses[0]
    assert np.abs(logits(peft, ids) - start).max() > 1e-4
    inner = peft.get_base_model()
    assert all(np.array_equal(to_numpy(inner.get_submodule(p).base_layer.weight.data), c) for p, c in codes.items())


class WordTokenizer:
    """A tokenizer that is not minipeft's: one id per word, from a fixed table (only encode() is used)."""

    def __init__(self, words: list[str]):
        self.ids = {w: i for i, w in enumerate(words)}

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]


def test_prompt_tuning_text_init_takes_any_tokenizer_with_encode(tmp_path):
    base = build_llama(0)
    tok = WordTokenizer([f"w{i}" for i in range(64)])
    config = PromptTuningConfig(num_virtual_tokens=5, prompt_tuning_init="TEXT", prompt_tuning_init_text="w7 w3 w9",
                                tokenizer=tok)
    peft = get_peft_model(base, config)
    prompt = to_numpy(peft.base_model.prompt_encoder["default"].embedding.weight.data)
    np.testing.assert_array_equal(prompt, to_numpy(base.model.embed_tokens.weight.data)[[7, 3, 9, 7, 3]])
    assert "tokenizer" not in config.to_dict()                  # an object: not part of adapter_config.json
    peft.save_pretrained(str(tmp_path))
    ids, _ = batch(2)
    loaded = PeftModel.from_pretrained(build_llama(0), str(tmp_path))   # for inference: no tokenizer needed
    np.testing.assert_array_equal(logits(loaded, ids), logits(peft, ids))
    with pytest.raises(ValueError, match="needs the base model's tokenizer.*set tokenizer_name_or_path in its "
                                         "adapter_config.json"):
        PeftModel.from_pretrained(build_llama(0), str(tmp_path), is_trainable=True)
    with pytest.raises(ValueError, match="outside the model's vocabulary of 64"):
        get_peft_model(build_llama(0), PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                                          prompt_tuning_init_text="w70", tokenizer=WordTokenizer(
                                                              [f"w{i}" for i in range(80)])))
    with pytest.raises(ConfigError, match="tokenizer must be None or a tokenizer with an encode"):
        PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_text="w1", tokenizer=3)
