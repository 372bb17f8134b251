"""The comparison harness: in --quick mode every column is filled for every method, and what it counts is what
each method's closed form says."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import pytest

from minipeft.nn.gpt import GPT, GPTConfig
from minipeft.workshop.compare import (
    LLM_RATES,
    METHOD_RECIPES,
    CompareConfig,
    format_table,
    llm_config,
    quick_config,
    recipe_rate,
    run_compare,
    time_generation,
    to_csv,
    write_outputs,
)
from minipeft.workshop.compare.harness import NOT_ON_LLAMA
from minipeft.workshop.pretrain import QUICK

NOT_MERGEABLE = {"houlsby", "pfeiffer", "prompt-tuning", "prefix-tuning"}   # a nonlinearity, or extra positions


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIPEFT_HOME", str(tmp_path_factory.mktemp("minipeft_home")))
    try:
        yield run_compare(quick_config(progress=False, steps=2))
    finally:
        mp.undo()


def test_every_method_fills_every_column(result):
    rows = {r["method"]: r for r in result.rows}
    assert list(rows) == ["base", *METHOD_RECIPES]
    metric = result.meta["metric"]
    for key, r in rows.items():
        assert r["scores"][metric] is not None and 0 <= r["scores"][metric] <= 1, key
        assert math.isfinite(r["ppl_after"]) and r["ppl_after"] > 1, key
        assert r["latency_ms"] > 0, key
        if key == "base":
            continue
        assert r["trainable"] > 0 and 0 < r["trainable_pct"] <= 100, key
        assert r["stored_bytes"] > 0 and r["step_s"] > 0 and math.isfinite(r["final_loss"]), key
        for part in ("weights", "gradients", "optimizer_state", "activations", "peak", "total"):
            assert r["memory"][part] > 0, (key, part)
        assert r["memory"]["gradients"] == 4 * r["trainable"] or key == "qlora", key    # float32 gradients
        assert r["memory"]["optimizer_state"] == 2 * r["memory"]["gradients"], key      # AdamW's m and v
        assert r["mergeable"] == (key not in NOT_MERGEABLE), key
        assert (r["latency_merged_ms"] is None) == (key in NOT_MERGEABLE), key


def test_counts_follow_the_closed_forms(result):
    rows = {r["method"]: r for r in result.rows}
    cfg = GPTConfig.from_preset(QUICK.preset, **dict(QUICK.overrides))
    C, F, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    n_base = result.meta["base_parameters"]
    assert rows["full"]["trainable"] == n_base and rows["full"]["trainable_pct"] == 100
    assert rows["lora-qv"]["trainable"] == L * 2 * 8 * (C + C)                      # r (in + out) on q and v
    assert rows["lora-all"]["trainable"] == L * 8 * (4 * 2 * C + 2 * (C + F))
    assert rows["qlora"]["trainable"] == rows["lora-all"]["trainable"]
    assert rows["ia3"]["trainable"] == L * (C + C + F)                              # k, v outputs; fc2's input
    assert rows["prompt-tuning"]["trainable"] == 20 * C
    assert rows["prefix-tuning"]["trainable"] == 20 * 2 * L * C
    assert rows["bitfit"]["trainable"] == L * (4 * C + F + C + 2 * C) + C           # linear and norm biases
    assert rows["layernorm"]["trainable"] == (2 * L + 1) * 2 * C
    # what a task costs: the whole model for full fine-tuning, a fraction for the rest; 4 bits for QLoRA's base
    assert rows["full"]["stored_bytes"] > 4 * n_base
    assert all(r["stored_bytes"] < rows["full"]["stored_bytes"] for k, r in rows.items() if k not in ("base", "full"))
    n_linear = L * (4 * C * C + 2 * C * F)
    saved = rows["lora-all"]["memory"]["weights"] - rows["qlora"]["memory"]["weights"]
    assert 3.4 * n_linear < saved < 3.5 * n_linear          # 32 -> 4.127 bits (+ a mean per tensor): 3.48 B each


def test_outputs_csv_json_and_table(result, tmp_path):
    paths = write_outputs(result, tmp_path, plot=False)
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["method"] for r in table] == [r["method"] for r in result.rows]
    assert all(r["memory_total"] for r in table[1:]) and table[0]["forgetting_pct"] == ""
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["config"]["steps"] == 2 and len(data["rows"]) == len(result.rows)
    text = format_table(result)
    assert all(r["label"] in text for r in result.rows)
    assert to_csv(result) == paths["csv"].read_text()


def test_plot_is_written_with_matplotlib(result, tmp_path):
    pytest.importorskip("matplotlib")
    png = write_outputs(result, tmp_path)["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_generation_times_every_form(keep_rng):
    forms = {name: GPT(GPTConfig.from_preset("test")) for name in ("a", "b", "c")}
    times = time_generation(forms, [1, 2, 3], tokens=2, rounds=2)
    assert set(times) == set(forms) and all(t > 0 for t in times.values())


def test_config_names_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        CompareConfig(methods=("lora", "bitfit"))
    with pytest.raises(ValueError, match="steps"):
        CompareConfig(steps=0)
    with pytest.raises(ValueError, match="n_train"):
        CompareConfig(n_train=4, batch_size=16)
    with pytest.raises(ValueError, match="unknown task"):
        CompareConfig(task="translation")


def test_every_recipe_says_where_its_learning_rate_comes_from():
    for key, r in METHOD_RECIPES.items():
        assert r.lr > 0 and r.lr_source and r.label, key


def test_json_output_writes_a_nan_score_as_null(result, tmp_path):
    """JSON has no NaN: a score that could not be computed is null, so any JSON reader takes the file."""
    rows = [dict(r, scores={**r["scores"], "fact_recall": math.nan}) for r in result.rows]
    path = write_outputs(dataclasses.replace(result, rows=rows), tmp_path, plot=False)["json"]

    def refuse(token):
        raise ValueError(f"compare.json holds {token}")
    data = json.loads(path.read_text(), parse_constant=refuse)
    assert all(r["scores"]["fact_recall"] is None for r in data["rows"])


# ---- a pretrained LLM as the base (here the tiny random Llama --quick puts on the same code path) -------------------
LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llm_result(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIPEFT_HOME", str(tmp_path_factory.mktemp("minipeft_home")))
    try:
        yield run_compare(quick_config(progress=False, steps=2, base=LLM))
    finally:
        mp.undo()


def test_llm_base_runs_every_method_that_applies_and_says_which_not(llm_result):
    rows = {r["method"]: r for r in llm_result.rows}
    assert list(rows) == ["base", *(k for k in METHOD_RECIPES if k != "bitfit")]
    assert llm_result.meta["not_applicable"] == {"bitfit": NOT_ON_LLAMA["bitfit"]}
    table = format_table(llm_result)
    assert "not run: bitfit, a Llama's linear and RMSNorm layers have no bias terms" in table
    assert "knows" in table and "English ppl" in table and "held-out ppl" not in table
    with pytest.raises(ValueError, match="no bias"):     # asked for by name, BitFit says why it cannot run
        run_compare(quick_config(progress=False, steps=1, base=LLM, methods=("bitfit",)))


def test_llm_base_counts_follow_the_llama_closed_forms(llm_result):
    from minipeft.workshop.llm.tiny import TINY_SHAPE  # noqa: PLC0415

    rows = {r["method"]: r for r in llm_result.rows}
    C, F, L = TINY_SHAPE["d_model"], TINY_SHAPE["d_ff"], TINY_SHAPE["n_layer"]
    kv = C // TINY_SHAPE["n_head"] * TINY_SHAPE["n_kv_head"]                       # grouped-query K/V width
    assert rows["lora-qv"]["trainable"] == L * 8 * ((C + C) + (C + kv))
    assert rows["lora-all"]["trainable"] == L * 8 * (2 * (C + C) + 2 * (C + kv) + 3 * (C + F))
    assert rows["ia3"]["trainable"] == L * (kv + kv + F)                            # k, v outputs; down_proj's input
    assert rows["layernorm"]["trainable"] == (2 * L + 1) * C                        # RMSNorm: a scale, no shift
    assert rows["prompt-tuning"]["trainable"] == 20 * C
    assert rows["prefix-tuning"]["trainable"] == 20 * 2 * L * kv                    # keys and values per layer
    assert rows["full"]["trainable"] == llm_result.meta["base_parameters"]


def test_llm_base_measures_forgetting_as_knowledge_and_english_perplexity(llm_result):
    from minipeft.workshop.data.knowledge import (  # noqa: PLC0415
        ENGLISH_FILE,
        KINDS,
        knowledge_score,
        load_knowledge,
        text_perplexity,
    )
    from minipeft.workshop.tutorial_base import load_tutorial_base  # noqa: PLC0415

    cfg = llm_result.meta["config"]
    base = load_tutorial_base(LLM, quick=True)
    english = ENGLISH_FILE.read_text(encoding="utf-8")[:cfg["english_chars"]]
    known = knowledge_score(base.model, base.tokenizer, load_knowledge()[:cfg["n_knowledge"]])
    assert llm_result.rows[0]["ppl_before"] == text_perplexity(base.model, base.tokenizer, english)
    assert llm_result.rows[0]["knowledge"] == known["accuracy"]
    assert llm_result.meta["forgetting_text"] == ENGLISH_FILE.name
    for r in llm_result.rows:
        assert 0 <= r["knowledge"] <= 1 and set(r["knowledge_by_kind"]) <= set(KINDS), r["method"]
        assert math.isfinite(r["ppl_after"]) and r["ppl_before"] == llm_result.rows[0]["ppl_before"], r["method"]
    moved = [r["method"] for r in llm_result.rows[1:] if r["ppl_after"] != r["ppl_before"]]
    assert "full" in moved and "lora-all" in moved                  # trained models read the text differently


def test_llm_base_uses_the_rates_measured_for_it(llm_result, monkeypatch):
    for r in llm_result.rows[1:]:
        assert (r["lr"], r["lr_source"]) == recipe_rate(r["method"], LLM), r["method"]
    monkeypatch.setitem(LLM_RATES, LLM, {"lora-qv": (2e-3, "a probe")})
    assert recipe_rate("lora-qv", LLM) == (2e-3, "a probe")
    lr, source = recipe_rate("ia3", LLM)
    assert lr == METHOD_RECIPES["ia3"].lr and "not measured on smollm2-135m-instruct" in source
    assert recipe_rate("ia3") == (METHOD_RECIPES["ia3"].lr, METHOD_RECIPES["ia3"].lr_source)   # the mini GPT's


def test_base_latency_is_the_median_of_its_timings_beside_each_method(llm_result):
    import statistics  # noqa: PLC0415

    beside = [r["latency_base_ms"] for r in llm_result.rows[1:]]
    assert llm_result.rows[0]["latency_ms"] == statistics.median(beside)
    assert all(t > 0 for t in beside)


def test_llm_config_and_bad_bases():
    cfg = llm_config(LLM, steps=5)
    assert cfg.base == LLM and cfg.steps == 5 and cfg.batch_size == 4 and "bitfit" not in cfg.methods
    with pytest.raises(ValueError, match="CompareConfig.base: unknown 'gpt-9'"):
        CompareConfig(base="gpt-9")
    with pytest.raises(ValueError, match="english_chars"):
        CompareConfig(english_chars=0)
