"""Spec of prefix tuning: the reparameterization MLP's op, gradients through attention, Hugging Face's table layout,
the fold, parameter counts, the adapter file, padding and generation; and a soft prompt's training step on the strict
CuPy stand-in. (The tuner contract, tests/test_tuner_contract.py, covers the rest.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from grad_check import grad_check
from lora_helpers import batch, build_gpt, logits, train_steps
from test_gpt import randomized64
from test_gpt_hooks import GRAD_TOL
from test_strict import STEP_READS, _step_reads

import minipeft
from minipeft import Tensor, backend, to_numpy
from minipeft.generate import context_left, generate
from minipeft.nn import GPT, GPTConfig
from minipeft.peft import AdapterError, ConfigError, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from minipeft.peft.tuners.prefix_tuning import prefix_projection

D, L = 16, 2   # the "test" preset's d_model and n_layer


def tuned(n: int = 3, seed: int = 0, base=None, std: float = 0.5, **kw):
    """A prefix-tuned test GPT with every adapter weight N(0, std^2) (non-zero, so it changes the output)."""
    peft = get_peft_model(base if base is not None else build_gpt(seed), PrefixTuningConfig(num_virtual_tokens=n, **kw))
    rng = np.random.default_rng(seed)
    for p in peft.base_model.adapter_parameters("default").values():
        p.data = backend.asarray(rng.normal(0, std, p.shape), dtype=p.dtype)
    return peft


def encoder(peft, name: str = "default"):
    return peft.base_model.prompt_encoder[name]


# ---- the op and the gradients -------------------------------------------------------------------------------
def test_prefix_projection_matches_central_differences():
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5, 4), (5,), (12, 5), (12,)]            # E (n, d), W1 (h, d), b1, W2 (2 L d, h), b2
    grad_check(prefix_projection, [rng.standard_normal(s) for s in shapes], "prefix_projection")


def test_prefix_projection_forms_only_the_gradients_it_is_asked_for():
    rng = np.random.default_rng(1)
    args = [Tensor(rng.standard_normal(s), requires_grad=i == 4) for i, s in enumerate([(3, 4), (5, 4), (5,), (12, 5),
                                                                                        (12,)])]
    out = prefix_projection(*args)
    dout = rng.standard_normal(out.shape)
    out.backward(dout)
    np.testing.assert_allclose(to_numpy(args[4].grad), dout.sum(axis=0), rtol=1e-15)   # db2 = sum over rows of dY
    assert all(a.grad is None for a in args[:4])


def test_grad_of_logits_wrt_the_prefix_table_through_attention_matches_central_differences():
    peft = tuned(2, base=randomized64(seed=3))
    enc = encoder(peft)
    ids = np.random.default_rng(2).integers(0, 64, (2, 3))

    def f(table):
        enc.embedding.weight = table
        return peft(ids)[0]

    grad_check(f, [np.random.default_rng(3).standard_normal((2, 2 * L * D))], "PrefixTuningModel(table)", **GRAD_TOL)


def test_grad_through_the_reparameterization_mlp_matches_central_differences():
    peft = tuned(2, base=randomized64(seed=4), prefix_projection=True, encoder_hidden_size=3)
    enc = encoder(peft)
    first, last = enc.transform[0], enc.transform[2]
    ids = np.random.default_rng(4).integers(0, 64, (2, 3))

    def f(E, W1, b1, W2, b2):
        enc.embedding.weight, first.weight, first.bias, last.weight, last.bias = E, W1, b1, W2, b2
        return peft(ids)[0]

    rng = np.random.default_rng(5)
    shapes = [(2, D), (3, D), (3,), (2 * L * D, 3), (2 * L * D,)]
    grad_check(f, [rng.standard_normal(s) * 0.5 for s in shapes], "PrefixTuningModel(MLP)", **GRAD_TOL)


# ---- what the model computes -------------------------------------------------------------------------------
def test_the_table_is_hugging_faces_layout_key_then_value_per_layer():
    peft = tuned(3)
    table = encoder(peft).embedding.weight
    blocks = [Tensor(to_numpy(table.data)[:, j * D:(j + 1) * D]) for j in range(2 * L)]   # column blocks of width d
    with minipeft.no_grad():
        want = peft.get_base_model()(batch(0)[0], prefix_kv=[(blocks[2 * i], blocks[2 * i + 1]) for i in range(L)])[0]
    np.testing.assert_array_equal(logits(peft, batch(0)[0]), want.numpy())


@pytest.mark.parametrize("h", [None, 7])
def test_trainable_counts_follow_the_closed_form(h):
    plain = get_peft_model(build_gpt(0), PrefixTuningConfig(num_virtual_tokens=4))
    assert plain.get_nb_trainable_parameters()[0] == 4 * 2 * L * D
    proj = get_peft_model(build_gpt(0), PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True,
                                                           encoder_hidden_size=h))
    hh = D if h is None else h                                   # None: token_dim, as Hugging Face fills it
    assert proj.peft_config["default"].encoder_hidden_size == hh
    assert proj.get_nb_trainable_parameters()[0] == 4 * D + (D * hh + hh) + (hh * 2 * L * D + 2 * L * D)


def test_the_fold_gives_the_same_outputs_and_leaves_only_the_table():
    peft = tuned(3, seed=6, base=build_gpt(6, dtype=np.float64), prefix_projection=True, encoder_hidden_size=5)
    ids = batch(6)[0]
    before = logits(peft, ids)
    assert np.abs(before - logits(build_gpt(6, dtype=np.float64), ids)).max() > 1e-3
    peft.base_model.fold_prefix_projection()
    assert encoder(peft).transform is None and encoder(peft).embedding.weight.shape == (3, 2 * L * D)
    assert peft.get_nb_trainable_parameters()[0] == 3 * 2 * L * D
    np.testing.assert_array_equal(logits(peft, ids), before)   # the table holds exactly what the MLP made
    assert train_steps(peft, ids, batch(7)[1], steps=2)       # the folded table still trains


def test_saving_folds_the_mlp_and_a_projected_adapter_cannot_be_loaded_for_training(tmp_path):
    from safetensors.numpy import load_file  # noqa: PLC0415

    peft = tuned(3, seed=7, prefix_projection=True, encoder_hidden_size=5)
    ids = batch(8)[0]
    out = logits(peft, ids)
    peft.save_pretrained(str(tmp_path))
    arrays = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(arrays) == ["prompt_embeddings"] and arrays["prompt_embeddings"].shape == (3, 2 * L * D)
    assert encoder(peft).projected                              # saving leaves the live MLP alone
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["prefix_projection"] is True and saved["inference_mode"] is True
    loaded = PeftModel.from_pretrained(build_gpt(7), str(tmp_path))
    np.testing.assert_array_equal(logits(loaded, ids), out)
    with pytest.raises(AdapterError, match="an adapter file holds the folded prefix table, which cannot be loaded "
                                           "back into an MLP: load it with is_trainable=False"):
        PeftModel.from_pretrained(build_gpt(7), str(tmp_path), is_trainable=True)


def test_a_prefix_takes_the_first_positions_and_the_tokens_follow_it():
    """Hugging Face's placement: after n prefix entries the T tokens sit at positions n..n+T-1, so the prefix counts
    against the context (generation and the data loaders leave it room through virtual_positions)."""
    peft = tuned(5)
    assert peft.base_model.virtual_positions == 5 and context_left(peft) == 11
    wpe = peft.get_base_model().wpe.weight
    wpe.requires_grad = True                                # to see which position rows the tokens read
    peft(batch(0)[0][:, :6])[0].sum().backward()
    used = to_numpy(wpe.grad).any(axis=1)
    assert used[5:11].all() and not used[:5].any() and not used[11:].any()
    wpe.requires_grad, wpe.grad = False, None
    assert logits(peft, np.zeros((1, 11), np.int64)).shape == (1, 11, 64)    # 5 prefix + 11 tokens fit
    with pytest.raises(ValueError, match=r"a prefix of 5 entries \+ 12 tokens = 17 positions exceed"):
        peft(np.zeros((1, 12), np.int64))
    assert len(generate(peft, [1, 2, 3], 8)) == 8                            # 3 + 8 = the 11 positions left
    with pytest.raises(ValueError, match="its 5 virtual tokens"):
        generate(peft, [1, 2, 3], 9)


def _gpt2_pair(seed: int = 0):
    """A tiny transformers GPT-2 (float64, no dropout) and a minipeft GPT holding the same weights."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    C, V = D, 64
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=16, n_embd=C, n_layer=L, n_head=2, n_inner=4 * C, resid_pdrop=0, embd_pdrop=0,
        attn_pdrop=0, bos_token_id=0, eos_token_id=0)).double().eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    gpt = GPT(GPTConfig(vocab_size=V, context_length=16, d_model=C, n_layer=L, n_head=2, d_ff=4 * C)).to(np.float64)

    def put(p, a):
        p.data = np.ascontiguousarray(a)

    put(gpt.wte.weight, sd["transformer.wte.weight"])
    put(gpt.wpe.weight, sd["transformer.wpe.weight"])
    for i, b in enumerate(gpt.blocks):   # GPT-2's Conv1D holds W^T; c_attn is q, k, v side by side
        h = f"transformer.h.{i}."
        for mod, name in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
            put(mod.weight, sd[h + name + ".weight"])
            put(mod.bias, sd[h + name + ".bias"])
        W, bias = sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]
        for j, lin in enumerate((b.attn.q_proj, b.attn.k_proj, b.attn.v_proj)):
            put(lin.weight, W[:, j * C:(j + 1) * C].T)
            put(lin.bias, bias[j * C:(j + 1) * C])
        for lin, name in ((b.attn.out_proj, "attn.c_proj"), (b.mlp.fc1, "mlp.c_fc"), (b.mlp.fc2, "mlp.c_proj")):
            put(lin.weight, sd[h + name + ".weight"].T)
            put(lin.bias, sd[h + name + ".bias"])
    put(gpt.ln_f.weight, sd["transformer.ln_f.weight"])
    put(gpt.ln_f.bias, sd["transformer.ln_f.bias"])
    return hf, gpt


@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")   # HF PEFT on our fingerprint fields
def test_a_hugging_face_prefix_adapter_gives_hugging_faces_outputs_and_ours_loads_there(tmp_path):
    """Hugging Face PEFT's prefix tuning on GPT-2 (its prefix is past_key_values: the tokens sit at n..n+T-1) and
    minipeft's agree to float64 rounding on the same weights, through the adapter files in both directions."""
    torch = pytest.importorskip("torch")
    hf_peft = pytest.importorskip("peft")
    hf, gpt = _gpt2_pair()
    ids = np.random.default_rng(0).integers(0, 64, (2, 7))
    with torch.no_grad():
        base_ref = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(logits(gpt, ids), base_ref, rtol=0, atol=1e-12)      # the same base
    theirs = hf_peft.get_peft_model(hf, hf_peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    with torch.no_grad():
        theirs.prompt_encoder.default.embedding.weight.copy_(torch.randn(3, 2 * L * D, dtype=torch.float64))
        want = theirs(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(want - base_ref).max() > 1e-2                                      # the prefix matters
    theirs.save_pretrained(str(tmp_path / "hf"))
    with pytest.warns(UserWarning, match="init_weights"):
        ours = PeftModel.from_pretrained(gpt, str(tmp_path / "hf"))
    np.testing.assert_allclose(logits(ours, ids), want, rtol=0, atol=1e-12)          # float64: ~1e-16 measured
    ours.save_pretrained(str(tmp_path / "ours"))
    hf2, _ = _gpt2_pair()
    back = hf_peft.PeftModel.from_pretrained(hf2, str(tmp_path / "ours"))
    with torch.no_grad():
        np.testing.assert_allclose(back(input_ids=torch.from_numpy(ids)).logits.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("config_cls", [PrefixTuningConfig, PromptTuningConfig])
def test_zero_virtual_tokens_is_refused_as_it_would_train_nothing(config_cls):
    with pytest.raises(ConfigError, match=r"num_virtual_tokens must be an int >= 1 .*got 0"):
        config_cls(num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        config_cls.from_dict({"peft_type": config_cls.PEFT_TYPE, "num_virtual_tokens": 0})


def test_training_leaves_the_base_bit_identical():
    peft = tuned(3, std=0.05)
    base = peft.get_base_model()
    before = {k: to_numpy(p.data).copy() for k, p in base.named_parameters()}
    ids, tgt = batch(10)
    losses = train_steps(peft, ids, tgt, steps=4, lr=3e-2)
    assert losses[-1] < losses[0]
    assert all(np.array_equal(to_numpy(p.data), before[k]) and p.grad is None for k, p in base.named_parameters())


def test_outputs_at_the_input_positions_do_not_depend_on_the_batchs_padding():
    peft = tuned(3, base=randomized64(seed=11))
    rng = np.random.default_rng(11)
    short, long_ = rng.integers(0, 64, 4), rng.integers(0, 64, 10)
    padded = np.zeros((2, 10), np.int64)
    padded[0, :4], padded[1] = short, long_
    np.testing.assert_allclose(logits(peft, padded)[0, :4], logits(peft, short[None])[0], rtol=0, atol=1e-12)


def test_generation_with_the_kv_cache_equals_without_and_differs_from_the_base():
    peft = tuned(3, seed=12, std=10.0)                    # loud keys draw attention away: greedy output changes
    out = generate(peft, [5, 6, 7], 10)                  # 3 prefix + 3 prompt + 10 new = the 16 positions
    assert out == generate(peft, [5, 6, 7], 10, use_cache=False)
    assert out != generate(build_gpt(12), [5, 6, 7], 10)


def test_passing_prefix_kv_to_a_prefix_tuned_model_raises():
    peft = tuned(2)
    with pytest.raises(ValueError, match="the adapter supplies prefix_kv itself"):
        peft(batch(0)[0], prefix_kv=[(Tensor(np.zeros((1, D), np.float32)),) * 2] * L)


def test_hugging_face_adapter_config_loads():
    hf = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 20, "token_dim": 768,
          "num_transformer_submodules": 1, "num_attention_heads": 12, "num_layers": 12, "encoder_hidden_size": 768,
          "prefix_projection": False, "inference_mode": True, "base_model_name_or_path": "gpt2", "revision": None,
          "modules_to_save": None}
    cfg = PrefixTuningConfig.from_dict(hf)
    assert (cfg.num_virtual_tokens, cfg.num_layers, cfg.prefix_projection) == (20, 12, False)
    with pytest.raises(ValueError, match=re.escape("token_dim=768 does not fit the model, which has 16")):
        get_peft_model(build_gpt(0), cfg)


# ---- the strict CuPy stand-in: a soft prompt's training step stays on the device -----------------------------
@pytest.fixture
def strict():
    prev = minipeft.get_device()
    with backend.fork_rng():
        minipeft.set_device("strict")
        try:
            yield backend.xp()
        finally:
            minipeft.set_device(prev)


@pytest.mark.parametrize("config", [PromptTuningConfig(num_virtual_tokens=3), PrefixTuningConfig(num_virtual_tokens=3),
                                    PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True)],
                         ids=["prompt", "prefix", "prefix-mlp"])
def test_a_soft_prompt_training_step_moves_nothing_to_the_host_and_reads_the_usual_scalars(strict, config):
    minipeft.manual_seed(0)
    model = get_peft_model(GPT(GPTConfig.from_preset("test")), config)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (2, 8)), rng.integers(0, 64, (2, 8))
    y[:, :3] = -100
    reads, to_host, to_device = _step_reads(model, strict.asarray(x), strict.asarray(y))
    assert to_host == 0 and to_device == 0
    assert {k: v for k, v in reads.items() if v} == STEP_READS
