"""Spec of prompt tuning: the op and its gradient, the virtual tokens' positions, padding, loss masking, the context,
generation with the KV cache, the three initialisations, the adapter file, multi-task swapping, and the nearest-token
reading of a learned prompt. (The tuner contract, tests/test_tuner_contract.py, covers the rest.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from grad_check import grad_check
from lora_helpers import batch, build_gpt, logits, train_steps
from test_gpt import randomized64
from test_gpt_hooks import GRAD_TOL

from minipeft import Tensor, backend, no_grad, ops, to_numpy
from minipeft.generate import generate
from minipeft.loss import causal_lm_loss
from minipeft.peft import AdapterError, ConfigError, PeftModel, PromptTuningConfig, get_peft_model
from minipeft.peft.tuners.prompt_tuning import nearest_tokens, prepend_prompt, prompt_nearest_tokens, text_init_ids
from minipeft.workshop.data.tokenizer import Tokenizer
from minipeft.workshop.finetune import _context


def tuned(n: int = 3, seed: int = 0, base=None, **kw):
    """A prompt-tuned test GPT whose prompt is N(0, 0.5^2) (non-zero, so it must change the output)."""
    peft = get_peft_model(base if base is not None else build_gpt(seed), PromptTuningConfig(num_virtual_tokens=n, **kw))
    w = peft.base_model.prompt_encoder["default"].embedding.weight
    w.data = backend.asarray(np.random.default_rng(seed).normal(0, 0.5, w.shape), dtype=w.dtype)
    return peft


def _prompt(peft, name: str = "default"):
    return peft.base_model.prompt_encoder[name].embedding.weight


# ---- the op ------------------------------------------------------------------------------------------------
def test_prepend_prompt_matches_central_differences():
    rng = np.random.default_rng(0)
    grad_check(lambda P, x: prepend_prompt(P, x), [rng.standard_normal((3, 4)), rng.standard_normal((2, 5, 4))],
               "prepend_prompt")


def test_the_prompt_gradient_is_the_virtual_slice_of_the_upstream_gradient_summed_over_the_batch():
    rng = np.random.default_rng(1)
    P = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    x = Tensor(rng.standard_normal((5, 6, 4)), requires_grad=True)
    out = prepend_prompt(P, x)
    assert out.shape == (5, 9, 4)
    np.testing.assert_array_equal(out.numpy()[2, :3], P.numpy())
    np.testing.assert_array_equal(out.numpy()[2, 3:], x.numpy()[2])
    dout = rng.standard_normal(out.shape)
    out.backward(dout)
    np.testing.assert_allclose(to_numpy(P.grad), dout[:, :3].sum(axis=0), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(to_numpy(x.grad), dout[:, 3:])


def test_prepend_prompt_refuses_mismatched_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"\(n, C\) and the embeddings \(B, T, C\) with the same C"):
        prepend_prompt(Tensor(np.zeros((2, 3))), Tensor(np.zeros((1, 4, 5))))
    with pytest.raises(TypeError, match="dtype mismatch"):
        prepend_prompt(Tensor(np.zeros((2, 3), np.float32)), Tensor(np.zeros((1, 4, 3))))


def test_grad_of_logits_wrt_the_prompt_through_the_model_matches_central_differences():
    peft = tuned(2, base=randomized64(seed=3))
    encoder = peft.base_model.prompt_encoder["default"]
    ids = np.random.default_rng(2).integers(0, 64, (2, 4))

    def f(P):
        encoder.embedding.weight = P        # the real path: the tuner reads its prompt from the encoder
        return peft(ids)[0]

    grad_check(f, [np.random.default_rng(3).standard_normal((2, 16))], "PromptTuningModel(prompt)", **GRAD_TOL)


# ---- what the model computes -------------------------------------------------------------------------------
def test_virtual_tokens_take_the_first_positions_and_their_outputs_are_dropped():
    peft = tuned(3)
    base = peft.get_base_model()
    ids, _ = batch(0, T=6)
    with no_grad():
        x = ops.concat([ops.broadcast_to(_prompt(peft), (2, 3, 16)), base.wte(ids)], axis=1)   # (B, 3 + 6, C)
        h = base.hidden_states(inputs_embeds=x)                                 # (B, 9, C)
        want = base.head(ops.getitem(h, (slice(None), slice(3, None)))).numpy()   # the head on the 6 real rows
    np.testing.assert_array_equal(logits(peft, ids), want)
    assert logits(peft, ids).shape == (2, 6, 64)


def test_training_leaves_the_base_bit_identical_and_forms_no_gradient_for_the_embedding_table():
    peft = tuned(4)
    base = peft.get_base_model()
    before = {k: to_numpy(p.data).copy() for k, p in base.named_parameters()}
    prompt_before = to_numpy(_prompt(peft).data).copy()
    ids, tgt = batch(3)
    losses = train_steps(peft, ids, tgt, steps=4, lr=3e-2)
    assert losses[-1] < losses[0]
    assert all(np.array_equal(to_numpy(p.data), before[k]) for k, p in base.named_parameters())
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())   # wte (the tied head) included
    assert not np.array_equal(to_numpy(_prompt(peft).data), prompt_before)


def test_outputs_at_the_input_positions_do_not_depend_on_the_batchs_padding():
    # right padding: a row's real tokens never attend to the pads after them, virtual tokens or not
    peft = tuned(3, base=randomized64(seed=4))
    rng = np.random.default_rng(4)
    short, long_ = rng.integers(0, 64, 5), rng.integers(0, 64, 11)
    alone = logits(peft, short[None])
    padded = np.zeros((2, 11), np.int64)
    padded[0, :5], padded[1] = short, long_
    np.testing.assert_allclose(logits(peft, padded)[0, :5], alone[0], rtol=0, atol=1e-12)   # float64 rounding only
    targets = np.full((2, 11), -100)
    targets[0, :4] = short[1:]
    with no_grad():
        a = causal_lm_loss(peft, short[None, :4], short[None, 1:]).item()
        b = causal_lm_loss(peft, padded[:1], targets[:1]).item()
    assert abs(a - b) < 1e-12


def test_the_loss_skips_ignored_targets_and_equals_the_forward_loss():
    peft = tuned(2)
    ids, tgt = batch(5)
    tgt[:, :3] = -100
    with no_grad():
        masked = causal_lm_loss(peft, ids, tgt).item()
        full = peft(ids, tgt)[1].item()
        lp = np.log(np.exp(logits(peft, ids).astype(np.float64)).sum(-1))
    want = np.mean([lp[b, t] - logits(peft, ids)[b, t, tgt[b, t]] for b in range(2) for t in range(3, 8)])
    assert abs(masked - full) < 1e-6 and abs(masked - want) < 1e-5   # float32 sums of ~10 terms of size ~4


# ---- the context --------------------------------------------------------------------------------------------
def test_virtual_tokens_plus_a_too_long_input_raise_naming_both_lengths():
    peft = tuned(5)
    logits(peft, np.zeros((1, 11), np.int64))                              # 5 + 11 = 16 = the context: fits
    msg = re.escape("prompt tuning: 5 virtual tokens + 12 input tokens = 17 positions exceed the model's context "
                    "length 16; truncate the input to at most 11 tokens, or use fewer virtual tokens")
    with pytest.raises(ValueError, match=msg):
        logits(peft, np.zeros((1, 12), np.int64))
    with no_grad(), pytest.raises(ValueError, match=msg):
        peft(inputs_embeds=peft.get_base_model().wte(np.zeros((1, 12), np.int64)))
    with pytest.raises(ValueError, match=r"exceeds the 11 positions its 5 virtual tokens leave of the model's "
                                         r"context_length 16; .* lower max_new_tokens to 7"):
        generate(peft, [1, 2, 3, 4], 8)
    assert len(generate(peft, [1, 2, 3, 4], 7)) == 7
    assert _context(peft) == 11                                            # finetune/predict: max_len of the tokens
    with peft.disable_adapter():
        assert _context(peft) == 16 and len(generate(peft, [1, 2, 3, 4], 12)) == 12


def test_generation_with_the_kv_cache_equals_without_and_differs_from_the_base():
    peft = tuned(3, seed=2)
    peft.base_model.prompt_encoder["default"].embedding.weight.data *= 20   # a loud prompt: greedy output changes
    out = generate(peft, [5, 6, 7], 9)
    assert out == generate(peft, [5, 6, 7], 9, use_cache=False)
    assert out != generate(build_gpt(2), [5, 6, 7], 9)
    sampled = dict(temperature=1.5, top_k=8, seed=3)
    assert generate(peft, [5, 6, 7], 9, **sampled) == generate(peft, [5, 6, 7], 9, use_cache=False, **sampled)


# ---- initialisation -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = ["Summarize the following conversation about the meeting on Monday."] * 20 + ["a b c d e f g"] * 5
    d = tmp_path_factory.mktemp("tok")
    Tokenizer.train(texts, vocab_size=300).save(d)
    return d


def test_text_init_ids_cuts_or_repeats_the_text_as_hugging_face_does():
    assert text_init_ids([1, 2, 3], 2) == [1, 2]
    assert text_init_ids([1, 2, 3], 3) == [1, 2, 3]
    assert text_init_ids([1, 2, 3], 7) == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(ValueError, match="encodes to no token"):
        text_init_ids([], 4)


@pytest.mark.parametrize("n", [2, 9, 30])
def test_init_from_text_reproduces_the_texts_embeddings(tokenizer_dir, n):
    text = "Summarize the following conversation."
    base = build_gpt(0, vocab_size=300)
    peft = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=n, prompt_tuning_init="TEXT",
                                                   prompt_tuning_init_text=text,
                                                   tokenizer_name_or_path=str(tokenizer_dir)))
    ids = Tokenizer.from_file(tokenizer_dir).encode(text)
    assert 2 < len(ids) < 30
    want = to_numpy(base.wte.weight.data)[text_init_ids(ids, n)]
    np.testing.assert_array_equal(to_numpy(_prompt(peft).data), want)
    assert _prompt(peft).requires_grad and not base.wte.weight.requires_grad


def test_sample_vocab_init_takes_rows_of_the_embedding_table_and_random_is_standard_normal():
    base = build_gpt(0)
    W = to_numpy(base.wte.weight.data)
    P = to_numpy(_prompt(get_peft_model(base, PromptTuningConfig(num_virtual_tokens=6,
                                                                   prompt_tuning_init="SAMPLE_VOCAB"))).data)
    assert all((W == row).all(axis=1).any() for row in P)
    R = to_numpy(_prompt(get_peft_model(build_gpt(0), PromptTuningConfig(num_virtual_tokens=60))).data)
    # 960 N(0, 1) draws: the sample std is within 0.1 of 1 with probability > 0.9999 (its sd is ~0.023)
    assert abs(R.std() - 1.0) < 0.1 and abs(R.mean()) < 0.15


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "num_virtual_tokens must be an int >= 1"),
    (dict(num_virtual_tokens=-1), "num_virtual_tokens must be an int >= 1"),
    (dict(num_virtual_tokens=True), "num_virtual_tokens must be an int >= 1"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="VOCAB"), "prompt_tuning_init must be 'RANDOM' or 'SAMPLE_VOCAB'"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", tokenizer_name_or_path="t"), "prompt_tuning_init_text"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"), "tokenizer_name_or_path"),
    (dict(num_virtual_tokens=4, num_transformer_submodules=2), "num_transformer_submodules must be None or 1"),
    (dict(num_virtual_tokens=4, token_dim=0), "token_dim must be None"),
])
def test_bad_configs_raise_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PromptTuningConfig(**kwargs)


def test_a_config_that_does_not_fit_the_model_or_a_missing_tokenizer_raises(tmp_path):
    with pytest.raises(ValueError, match="token_dim=32 does not fit the model, which has 16"):
        get_peft_model(build_gpt(0), PromptTuningConfig(num_virtual_tokens=2, token_dim=32))
    with pytest.raises(ValueError, match="tokenizer_name_or_path=.*no readable tokenizer.json"):
        get_peft_model(build_gpt(0), PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT",
                                                        prompt_tuning_init_text="hi",
                                                        tokenizer_name_or_path=str(tmp_path)))


def test_hugging_face_adapter_config_loads_and_tokenizer_kwargs_is_refused():
    hf = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 8, "token_dim": 16,
          "num_transformer_submodules": 1, "num_attention_heads": 2, "num_layers": 2, "prompt_tuning_init": "TEXT",
          "prompt_tuning_init_text": "Classify:", "tokenizer_name_or_path": "gpt2", "tokenizer_kwargs": None,
          "inference_mode": True, "base_model_name_or_path": "gpt2", "revision": None, "modules_to_save": None}
    cfg = PromptTuningConfig.from_dict(hf)
    assert cfg.num_virtual_tokens == 8 and cfg.prompt_tuning_init == "TEXT"
    with pytest.raises(ConfigError, match="tokenizer_kwargs"):
        PromptTuningConfig.from_dict({**hf, "tokenizer_kwargs": {"use_fast": False}})


# ---- files and multi-task swapping --------------------------------------------------------------------------
def test_the_adapter_file_holds_prompt_embeddings_and_the_swap_reproduces_each_task(tmp_path):
    from safetensors.numpy import load_file  # noqa: PLC0415

    peft = tuned(3, seed=5)
    peft.add_adapter("other", PromptTuningConfig(num_virtual_tokens=5))
    ids = batch(6, T=6)[0]
    out = {}
    for name in ("default", "other"):
        peft.set_adapter(name)
        out[name] = logits(peft, ids)
    assert peft.base_model.virtual_positions == 5 and np.abs(out["default"] - out["other"]).max() > 1e-3
    peft.save_pretrained(str(tmp_path))
    arrays = load_file(str(tmp_path / "other" / "adapter_model.safetensors"))
    assert list(arrays) == ["prompt_embeddings"] and arrays["prompt_embeddings"].shape == (5, 16)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["num_virtual_tokens"], saved["token_dim"], saved["num_layers"]) == (
        "PROMPT_TUNING", 3, 16, 2)
    loaded = PeftModel.from_pretrained(build_gpt(5), str(tmp_path))
    loaded.load_adapter(str(tmp_path / "other"), "other")
    for name in ("default", "other"):
        loaded.set_adapter(name)
        np.testing.assert_array_equal(logits(loaded, ids), out[name])
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["num_virtual_tokens"] = 4                                          # edited after saving: refused by shape
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=re.escape("prompt_embeddings has shape (3, 16) but the model expects "
                                                     "(4, 16)")):
        PeftModel.from_pretrained(build_gpt(5), str(tmp_path))


# ---- what the learned tokens mean -----------------------------------------------------------------------------
def test_nearest_tokens_finds_a_vocabulary_row_itself_at_cosine_one_whatever_its_scale():
    W = np.random.default_rng(7).standard_normal((50, 8))
    ids, cos = nearest_tokens(np.stack([W[3] * 5.0, W[41] * 0.1]), W, k=3)
    assert ids[:, 0].tolist() == [3, 41] and np.allclose(cos[:, 0], 1.0) and (np.diff(cos, axis=1) <= 0).all()
    cosines = (W / np.linalg.norm(W, axis=1, keepdims=True)) @ (W[3] / np.linalg.norm(W[3]))
    assert ids[0].tolist() == np.argsort(-cosines)[:3].tolist()
    with pytest.raises(ValueError, match="k must be an int in"):
        nearest_tokens(W[:2], W, k=0)


def test_prompt_nearest_tokens_of_a_sample_vocab_prompt_are_its_own_tokens(tokenizer_dir):
    tok = Tokenizer.from_file(tokenizer_dir)
    peft = get_peft_model(build_gpt(0, vocab_size=300), PromptTuningConfig(num_virtual_tokens=4,
                                                                             prompt_tuning_init="SAMPLE_VOCAB"))
    W, P = to_numpy(peft.get_base_model().wte.weight.data), to_numpy(_prompt(peft).data)
    rows = [int(np.flatnonzero((W == p).all(axis=1))[0]) for p in P]
    near = prompt_nearest_tokens(peft, tok, k=2)
    assert [r[0][0] for r in near] == [tok.id_to_token(i) for i in rows]
    assert all(abs(r[0][1] - 1.0) < 1e-6 for r in near)                    # float32 norms
    assert [r[0][0] for r in prompt_nearest_tokens(peft, k=1)] == rows


def test_modules_to_save_train_and_save_beside_the_prompt(tmp_path):
    peft = tuned(2, modules_to_save=["ln_f"])
    assert peft.get_nb_trainable_parameters()[0] == 2 * 16 + 2 * 16          # the prompt + ln_f's weight and bias
    ln_f = peft.get_base_model().ln_f.modules_to_save["default"]
    ln_f.weight.data = ln_f.weight.data * 1.5
    ids = batch(11)[0]
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    from safetensors.numpy import load_file  # noqa: PLC0415

    assert sorted(load_file(str(tmp_path / "adapter_model.safetensors"))) == [
        "base_model.model.ln_f.bias", "base_model.model.ln_f.weight", "prompt_embeddings"]
    np.testing.assert_array_equal(logits(PeftModel.from_pretrained(build_gpt(0), str(tmp_path)), ids), out)
