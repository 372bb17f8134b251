"""Spec of LoRA on a whole model: injection by name, parameter counts, a frozen base, adapters, merging.

Every count is checked against the closed form r * (d_in + d_out) per adapted matrix.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from lora_helpers import TEST, batch, build_gpt, logits, seeded, snapshot, train_steps

from minipeft.nn import GPT, Linear, Module
from minipeft.peft import LoraConfig, LoraLinear, PeftModel, get_peft_model
from minipeft.peft.tuners.modules_to_save import ModulesToSaveWrapper

ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
MLP = ["fc1", "fc2"]
C, F, L = TEST.d_model, TEST.d_ff, TEST.n_layer
SHAPES = {"q_proj": (C, C), "k_proj": (C, C), "v_proj": (C, C), "out_proj": (C, C), "fc1": (C, F), "fc2": (F, C)}


@pytest.fixture(autouse=True)
def _own_generator():
    """Adapter init draws from the global generator: seed it here and give it back afterwards."""
    with seeded(1234):
        yield


def lora_paths(model) -> set[str]:
    return {p for p, m in model.named_modules() if isinstance(m, LoraLinear)}


# ---- injection and identity at init --------------------------------------------------------------------
def test_default_init_output_is_bit_identical_to_base():
    """B = 0 at init, so every wrapped layer adds exact zeros: array_equal, not allclose."""
    ids, _ = batch(0)
    model = build_gpt(0)
    ref = logits(model, ids)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=ATTN + MLP))
    assert len(lora_paths(peft)) == 6 * L
    np.testing.assert_array_equal(logits(peft, ids), ref)


def test_injection_wraps_exactly_the_targets_and_names_params_like_peft():
    peft = get_peft_model(build_gpt(0), LoraConfig(r=4))  # default targets: q_proj, v_proj
    assert lora_paths(peft) == {f"base_model.model.blocks.{i}.attn.{n}" for i in range(L) for n in ("q_proj", "v_proj")}
    params = dict(peft.named_parameters())
    pre = "base_model.model.blocks.0.attn.q_proj"
    assert params[f"{pre}.lora_A.default.weight"].shape == (4, C)
    assert params[f"{pre}.lora_B.default.weight"].shape == (C, 4)
    assert f"{pre}.base_layer.weight" in params
    assert sorted(k for k, p in params.items() if p.requires_grad) == sorted(
        f"base_model.model.blocks.{i}.attn.{n}.lora_{ab}.default.weight"
        for i in range(L) for n in ("q_proj", "v_proj") for ab in "AB")


def test_get_peft_model_on_a_peft_model_raises():
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2))
    with pytest.raises(TypeError, match="already a PeftModel"):
        get_peft_model(peft, LoraConfig(r=2))


# ---- parameter counts ----------------------------------------------------------------------------------
def all_biases() -> int:
    """Every bias of the test GPT: per block 4 attention (C) + fc1 (F) + fc2 (C) + two layer norms (C); ln_f."""
    return L * (4 * C + F + C + 2 * C) + C


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ATTN, ATTN + MLP])
@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
@pytest.mark.parametrize("r", [1, 4])
def test_trainable_count_is_the_closed_form(targets, bias, r):
    base = build_gpt(0)
    n_base = base.num_parameters()
    peft = get_peft_model(base, LoraConfig(r=r, target_modules=targets, bias=bias))
    lora = L * sum(r * (SHAPES[t][0] + SHAPES[t][1]) for t in targets)       # r (d_in + d_out) per matrix
    extra = {"none": 0, "all": all_biases(), "lora_only": L * sum(SHAPES[t][1] for t in targets)}[bias]
    trainable, total = peft.get_nb_trainable_parameters()
    assert (trainable, total) == (lora + extra, n_base + lora)
    assert sum(p.size for p in peft.parameters() if p.requires_grad) == trainable


def test_print_trainable_parameters_format(capsys):
    peft = get_peft_model(build_gpt(0), LoraConfig(r=4, target_modules=ATTN))
    line = peft.print_trainable_parameters()
    out = capsys.readouterr().out.strip()
    assert out == line
    m = re.fullmatch(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: (\d+\.\d{4})", out)
    assert m, out
    t, a = (int(g.replace(",", "")) for g in m.groups()[:2])
    assert (t, a) == peft.get_nb_trainable_parameters() and t == L * 4 * 4 * 2 * C
    assert float(m.group(3)) == pytest.approx(100 * t / a, abs=5e-5)
    assert "," in m.group(2)  # thousands separators, as Hugging Face PEFT prints them


class OneMatrix(Module):
    """The seed example's model: a single bias-free Linear with W0 in R^{512 x 64}."""

    def __init__(self):
        self.proj = Linear(64, 512, bias=False)

    def forward(self, x):
        return self.proj(x)


def test_seed_example_512x64_rank_8_trains_4608_params():
    with seeded(0):
        base = OneMatrix()
    assert base.proj.weight.shape == (512, 64) and base.num_parameters() == 32_768
    peft = get_peft_model(base, LoraConfig(r=8, target_modules=["proj"]))
    A = peft.base_model.model.proj.lora_A["default"].weight
    B = peft.base_model.model.proj.lora_B["default"].weight
    assert (A.size, B.size) == (512, 4_096)                                   # A: 8 x 64, B: 512 x 8
    trainable, total = peft.get_nb_trainable_parameters()
    assert trainable == 4_608 == 8 * (512 + 64)
    assert total == 32_768 + 4_608
    assert round(1 - trainable / 32_768, 3) == 0.859                          # an 86% reduction


# ---- training leaves the base alone --------------------------------------------------------------------
def test_base_weights_bit_identical_after_training():
    ids, tgt = batch(1)
    peft = get_peft_model(build_gpt(0), LoraConfig(r=4, target_modules=ATTN + MLP))
    before = snapshot(peft, skip="lora_")
    lora_before = snapshot(peft)
    losses = train_steps(peft, ids, tgt, steps=4)
    assert losses[-1] < losses[0], "training did not train: the check below would be vacuous"
    after = snapshot(peft)
    for name, arr in before.items():
        np.testing.assert_array_equal(after[name], arr, err_msg=f"frozen base parameter {name} changed")
        assert dict(peft.named_parameters())[name].grad is None, f"{name} got a gradient"
    changed = [k for k in after if "lora_" in k and not np.array_equal(after[k], lora_before[k])]
    assert len(changed) == 2 * 6 * L


def test_merged_equals_unmerged_after_training_float64():
    """Whole GPT in float64: each Linear's merge error is ~(k + r) eps ~ 1e-14 relative (see
    lora_helpers.merge_bound); layer norm, attention and two blocks amplify that by far less than
    10^4, so 1e-10 of the largest logit holds with margin and any real mistake (O(1)) fails."""
    ids, tgt = batch(2)
    model = build_gpt(0, dtype=np.float64)
    base = logits(model, ids)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=ATTN + MLP))
    train_steps(peft, ids, tgt, steps=3)
    unmerged = logits(peft, ids)
    peft.merge_adapter()
    merged = logits(peft, ids)
    scale = np.abs(unmerged).max()
    assert np.abs(merged - unmerged).max() <= 1e-10 * scale
    assert np.abs(merged - base).max() > 1e-4 * scale
    peft.unmerge_adapter()
    assert np.abs(logits(peft, ids) - unmerged).max() <= 1e-10 * scale


# ---- config validation and targeting -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(r=0), "r"), (dict(r=-2), "r"), (dict(r=2.5), "r"), (dict(r=True), "r"),
    (dict(lora_alpha=0), "lora_alpha"), (dict(lora_alpha=-1.0), "lora_alpha"),
    (dict(lora_dropout=-0.1), "lora_dropout"), (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(bias="some"), "bias"), (dict(init_lora_weights="zeros"), "init_lora_weights"),
    (dict(target_modules=[]), "target_modules"), (dict(target_modules="blocks.(q"), "target_modules"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LoraConfig\.{field}"):
        LoraConfig(**kwargs)


def test_target_that_matches_nothing_lists_the_names_that_exist():
    model = build_gpt(0)
    with pytest.raises(ValueError, match="matched no module") as e:
        get_peft_model(model, LoraConfig(target_modules=["query"]))
    for name in ATTN + MLP:
        assert f"'{name}'" in str(e.value)
    assert not lora_paths(model), "a failed injection must not leave wrappers behind"


def test_non_linear_target_raises():
    with pytest.raises(TypeError, match="ln_1"):
        get_peft_model(build_gpt(0), LoraConfig(target_modules=["ln_1"]))


def test_regex_target_modules():
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=r"blocks\.0\.attn\.(q|v)_proj"))
    assert lora_paths(peft) == {"base_model.model.blocks.0.attn.q_proj", "base_model.model.blocks.0.attn.v_proj"}
    assert peft.get_nb_trainable_parameters()[0] == 2 * 2 * (C + C)


@pytest.mark.parametrize("layers", [1, [0], [0, 1]])
def test_layers_to_transform_limits_injection(layers):
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2, target_modules=ATTN, layers_to_transform=layers))
    want = [layers] if isinstance(layers, int) else layers
    assert lora_paths(peft) == {f"base_model.model.blocks.{i}.attn.{n}" for i in want for n in ATTN}


# ---- several adapters ----------------------------------------------------------------------------------
def two_trained_adapters():
    """Adapters 'a' and 'b', each trained 3 AdamW steps on its own random targets; their logits right after."""
    ids, tgt_a = batch(10)
    _, tgt_b = batch(11)
    model = build_gpt(0)
    base = logits(model, ids)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=ATTN), adapter_name="a")
    train_steps(peft, ids, tgt_a)
    out_a = logits(peft, ids)
    peft.add_adapter("b", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "fc1"]))
    assert peft.active_adapter == "a"
    peft.set_adapter("b")
    train_steps(peft, ids, tgt_b)
    out_b = logits(peft, ids)
    return peft, ids, base, out_a, out_b


def test_set_adapter_swaps_between_trained_adapters():
    peft, ids, base, out_a, out_b = two_trained_adapters()
    assert np.abs(out_a - out_b).max() > 1e-3 and np.abs(out_a - base).max() > 1e-3
    peft.set_adapter("a")
    np.testing.assert_array_equal(logits(peft, ids), out_a)
    peft.set_adapter("b")
    np.testing.assert_array_equal(logits(peft, ids), out_b)
    trainable = {k for k, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in k for k in trainable), "only the active adapter trains"
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        peft.set_adapter("c")


def test_delete_adapter():
    peft, ids, _, out_a, _ = two_trained_adapters()
    peft.delete_adapter("b")
    assert list(peft.peft_config) == ["a"] and peft.active_adapter == "a"
    assert not any(".b." in k for k, _ in peft.named_parameters())
    np.testing.assert_array_equal(logits(peft, ids), out_a)
    with pytest.raises(KeyError):
        peft.delete_adapter("b")


def test_disable_adapter_gives_the_base_output_also_while_merged():
    peft, ids, base, _, out_b = two_trained_adapters()
    with peft.disable_adapter():
        np.testing.assert_array_equal(logits(peft, ids), base)
    np.testing.assert_array_equal(logits(peft, ids), out_b)
    peft.merge_adapter()
    merged = logits(peft, ids)
    # float32: unmerging restores W0 to a few ulps (see test_lora_layer), so logits agree to ~1e-6 relative
    with peft.disable_adapter():
        np.testing.assert_allclose(logits(peft, ids), base, rtol=0, atol=1e-5 * np.abs(base).max())
        assert np.abs(logits(peft, ids) - out_b).max() > 1e-3
    np.testing.assert_array_equal(logits(peft, ids), merged)  # merged again on the way out
    assert all(m.merged for m in peft.base_model.lora_layers() if m.active_adapter)


def test_adding_an_existing_adapter_name_raises():
    peft = get_peft_model(build_gpt(0), LoraConfig(r=2), adapter_name="x")
    with pytest.raises(ValueError, match="'x' already exists"):
        peft.add_adapter("x", LoraConfig(r=4))
    assert peft.get_nb_trainable_parameters()[0] == L * 2 * 2 * (C + C)      # nothing was added


def test_set_adapter_while_merged_raises():
    peft, *_ = two_trained_adapters()
    peft.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge"):
        peft.set_adapter("a")


# ---- merge_and_unload / unload -------------------------------------------------------------------------
def test_merge_and_unload_returns_a_plain_gpt_with_the_merged_output():
    ids, tgt = batch(3)
    model = build_gpt(0)
    shapes = {k: p.shape for k, p in model.named_parameters()}
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=ATTN + MLP))
    train_steps(peft, ids, tgt)
    peft.merge_adapter()
    merged = logits(peft, ids)
    plain = peft.merge_and_unload()           # already merged: merges nothing twice
    assert type(plain) is GPT and not isinstance(plain, PeftModel)
    assert not any(isinstance(m, (LoraLinear, ModulesToSaveWrapper)) for _, m in plain.named_modules())
    assert {k: p.shape for k, p in plain.named_parameters()} == shapes
    np.testing.assert_array_equal(logits(plain, ids), merged)


def test_merge_and_unload_from_unmerged_matches_merged_output():
    ids, tgt = batch(4)
    peft = get_peft_model(build_gpt(0), LoraConfig(r=4, target_modules=ATTN))
    train_steps(peft, ids, tgt)
    unmerged = logits(peft, ids)
    plain = peft.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for _, m in plain.named_modules())
    # float32: each merged Linear is within ~(k + r) eps ~ 4e-6 relative of the unmerged one (merge_bound)
    np.testing.assert_allclose(logits(plain, ids), unmerged, rtol=0, atol=1e-5 * np.abs(unmerged).max())


def test_unload_gives_back_the_base_model_unchanged():
    ids, tgt = batch(5)
    model = build_gpt(0)
    ref, before = logits(model, ids), snapshot(model)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=ATTN + MLP))
    train_steps(peft, ids, tgt)
    plain = peft.unload()
    assert plain is model and not lora_paths(plain)
    assert snapshot(plain).keys() == before.keys()
    np.testing.assert_array_equal(logits(plain, ids), ref)
