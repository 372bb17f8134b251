"""Every tutorial runs end to end in --quick mode (tiny model, cached in a temporary MINIPEFT_HOME)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("minipeft_home")


def run_tutorial(path: Path, home: Path, monkeypatch, capsys, *args: str) -> tuple[str, object]:
    """Run `main(["--quick", *args])` of a tutorial; returns what it printed and what main returned."""
    monkeypatch.setenv("MINIPEFT_HOME", str(home))
    spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", *args])
    return capsys.readouterr().out, result


def test_there_are_tutorials():
    assert [p.name[:2] for p in TUTORIALS][:6] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_quick(path, home, monkeypatch, capsys, keep_rng):
    out, _ = run_tutorial(path, home, monkeypatch, capsys)
    expected = {
        "00": ["analytic (backward)", "finite difference", "max |hand - AdamW|",
               "frozen weights with a gradient (biases only): 0 of", "dW matmuls skipped"],
        "01": ["validation loss", "zero-shot scores", "dialogsum", "sentiment"],
        "02": ["4,608", "0.859", "max |merged - unmerged|"],
        "03": ["trainable params:", "LoRA r=8", "full fine-tuning", "ROUGE-L"],
        "04": ["storage for 3 tasks", "reloaded adapters reproduce every prediction exactly: True"],
        "05": ["trainable", "val loss", "best ROUGE-L"],
        "06": ["Houlsby m=", "Pfeiffer m=", "(IA)^3 (k, v, fc2)", "LoRA r=1 (k, v, fc2)", "cannot be merged",
               "inference latency", "LoRA r=8, merged"],
        "08": ["virtual tokens + ", "prompt tuning n=100", "prefix tuning n=20", "LoRA r=8", "full fine-tuning",
               "nearest vocabulary tokens", "tokens of the task's summaries"],
        "09": ["zero-shot", "gap PT", "prompt tuning's gap to full fine-tuning from the smallest to the largest"],
        "10": ["NF4 + DQ", "max |e| / bound", "QLoRA, NF4+DQ", "re-NF4+DQ", "LLaMA-7B", "what the numbers show"],
    }.get(path.name[:2], [])
    for text in expected:
        assert text in out, f"{path.name} --quick did not print {text!r}"


def test_autograd_by_hand_evidence(home, monkeypatch, capsys, keep_rng):
    """Tutorial 00's numbers in --quick mode: gradients match, AdamW by hand is AdamW, freezing drops every dW."""
    _, r = run_tutorial(next(p for p in TUTORIALS if p.name.startswith("00_")), home, monkeypatch, capsys)
    assert r["ln_err"] < 1e-7 and r["gpt_err"] < 1e-5       # float64 central differences
    assert r["last"] < r["first"] - 0.3                     # the hand-written AdamW really trains
    assert r["ulps"] <= 4                                   # same update as minipeft.optim.AdamW up to float32 rounding
    full, bitfit = r["rows"]["all trainable"], r["rows"]["biases only (BitFit)"]
    assert full["dW"] == 6 * r["n_layer"] + 1               # q, k, v, out, fc1, fc2 per block + the tied LM head
    assert bitfit["dW"] == 0 and r["frozen_with_grad"] == 0
    assert bitfit["fwd"] == full["fwd"] and bitfit["bwd"] == full["bwd"] - full["dW"]  # only the dW products go
    assert 0.2 < r["saved"] < 0.45                          # about a third of the step's matmul FLOPs
    last = r["rows"]["last block + ln_f"]
    assert last["bwd_flops"] < bitfit["bwd_flops"]          # frozen lower layers also skip their dx products


def test_qlora_evidence(home, monkeypatch, capsys, keep_rng):
    """Tutorial 10's numbers in --quick mode: 4 bits take less, every weight is within the NF4 bound, the merge
    into float32 is exact and re-quantizing it is not, and LLaMA-65B's double quantization saves the paper's ~3 GB."""
    _, r = run_tutorial(next(p for p in TUTORIALS if p.name.startswith("10_")), home, monkeypatch, capsys)
    b = r["bytes"]
    assert b["NF4 + DQ"]["total"] < b["NF4"]["total"] < b["float32"]["total"]
    assert b["NF4"]["linear_bits"] == 4.5 and 4.127 < b["NF4 + DQ"]["linear_bits"] < 4.2
    assert max(e["bound_ratio"] for e in r["error"].values()) <= 1 + 1e-5   # float32 rounding aside
    merge = r["merge"]
    assert merge["QLoRA merged, fp32"]["logit_diff"] < 1e-4 < merge["merged, re-NF4+DQ"]["logit_diff"]
    assert 2.9 < r["llama"]["LLaMA-65B"]["dq_saving"] < 3.1 and 6.7e9 < r["llama"]["LLaMA-7B"]["params"] < 6.8e9


def test_adapters_evidence(home, monkeypatch, capsys, keep_rng):
    """Tutorial 06's numbers in --quick mode: every count is its closed form, Houlsby's width matches LoRA's budget,
    merged LoRA and (IA)^3 agree with their unmerged models, and every deployed form was timed."""
    _, r = run_tutorial(next(p for p in TUTORIALS if p.name.startswith("06_")), home, monkeypatch, capsys)
    d, L, f = r["d_model"], r["n_layer"], r["d_ff"]
    lora, houlsby, pfeiffer, ia3, lora1 = (row["trainable"] for row in r["rows"])
    mh, mp = r["m"]["houlsby"], r["m"]["pfeiffer"]
    assert lora == r["lora_budget"] == L * 8 * (4 * 2 * d + 2 * (d + f))         # r (in + out), six matrices
    assert houlsby == 2 * L * (2 * d * mh + d + mh) and pfeiffer == L * (2 * d * mp + d + mp)
    assert abs(houlsby - lora) <= L * (2 * d + 1)                                # the closest width: within a step
    assert ia3 == L * (2 * d + f) and lora1 == L * (2 * 2 * d + f + d)  # IA3: d, d, d_ff; LoRA r=1: 2d, 2d, d_ff+d
    assert max(r["merge_error"].values()) < 1e-4                                     # float32 rounding only
    assert len(r["latency"]) == 7 and all(t["forward_s"] > 0 and t["gen_token_s"] > 0 for t in r["latency"].values())


def test_soft_prompt_evidence(home, monkeypatch, capsys, keep_rng):
    """Tutorials 08 and 09 in --quick mode: every trainable count is its closed form (prompt tuning n d, prefix
    tuning n 2 L d), every learned prompt moved from its initialisation, and 09 reports a gap for every size."""
    _, r = run_tutorial(next(p for p in TUTORIALS if p.name.startswith("08_")), home, monkeypatch, capsys)
    d, L = r["d_model"], r["n_layer"]
    counts = {run["label"]: run["trainable"] for run in r["runs"]}
    assert [counts[f"prompt tuning n={n}"] for n in (1, 5, 20, 100)] == [n * d for n in (1, 5, 20, 100)]
    assert counts["prefix tuning n=20"] == 20 * 2 * L * d
    assert min(r["moved"]) > 0 and 0 <= r["task_share"] <= 1 and 0 < r["vocab_rate"] < 1
    _, r = run_tutorial(next(p for p in TUTORIALS if p.name.startswith("09_")), home, monkeypatch, capsys)
    assert len(r["rows"]) == len(r["gaps"]) == 2 and r["rows"][0]["params"] < r["rows"][1]["params"]
    for row in r["rows"]:
        assert row["trainable"]["prompt tuning n=20"] == 20 * row["d_model"]
        assert row["trainable"]["full fine-tuning"] == row["params"]


def test_lora_vs_full_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 03 with --base takes the real model's code path (here on the tiny random Llama): LoRA on every
    linear layer holds r (d_in + d_out) per matrix, full fine-tuning trains every weight and stores a whole model."""
    path = next(p for p in TUTORIALS if p.name.startswith("03_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    c, rows = r["config"], r["rows"]
    d, f, kv = c.d_model, c.d_ff, c.n_kv_head * c.d_model // c.n_head
    per_layer = 8 * ((d + d) + (d + kv) * 2 + (d + d) + 2 * (d + f) + (f + d))   # q, k, v, o, gate, up, down
    assert type(c).__name__ == "LlamaConfig" and "tiny-llama.gguf" in out
    assert rows["LoRA r=8"]["trainable"] == c.n_layer * per_layer
    assert rows["full fine-tuning"]["trainable"] == r["n_base"]
    assert rows["full fine-tuning"]["stored"] > 4 * r["n_base"] > rows["LoRA r=8"]["stored"]
    assert list(r["forgetting"]) == ["base, zero-shot", "LoRA r=8", "full fine-tuning"]
    assert all(0 <= share <= 1 and ppl > 1 for share, ppl in r["forgetting"].values())



def test_multitask_swap_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 04 with --base on the tiny random Llama: three LoRA adapters on q, v of one base, each r (d_in + d_out)
    per matrix and stored as exactly that many float32 values after its safetensors header; every adapter is scored
    on every task, and the adapters reloaded onto a fresh base reproduce every prediction."""
    path = next(p for p in TUTORIALS if p.name.startswith("04_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    c, tasks = r["config"], ("dialogsum", "qa", "sentiment")
    d, kv = c.d_model, c.n_kv_head * c.d_model // c.n_head
    per_adapter = c.n_layer * 8 * ((d + d) + (d + kv))                       # q (d -> d), v (d -> kv), r = 8
    assert type(c).__name__ == "LlamaConfig" and "tiny-llama.gguf" in out
    assert r["trainable"] == dict.fromkeys(tasks, per_adapter)
    for t in tasks:                                                          # lora_A, lora_B in float32, nothing else
        assert r["files"][t]["bytes"] == 4 * per_adapter + r["files"][t]["header"]
    adapters = {k: v for k, v in r["matrix"].items() if k[0] != "base"}
    assert sorted(adapters) == sorted((a, t) for a in tasks for t in tasks)
    assert all(0 <= v <= 1 for v in r["matrix"].values())
    assert r["same"] == [True, True, True]


def test_qlora_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 10 with --base on the tiny random Llama: the 4-bit linears take their closed-form bytes (NF4 + DQ:
    4 bits a weight, an 8-bit scale per 64, a float32 per 256 scales and one float32 mean per tensor), every layer
    kind's worst weight lies within the NF4 bound, quantizing moves the held-out loss, and LoRA and QLoRA train the
    same closed-form count."""
    path = next(p for p in TUTORIALS if p.name.startswith("10_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    c, b = r["config"], r["bytes"]
    d, f, kv = c.d_model, c.d_ff, c.n_kv_head * c.d_model // c.n_head
    sizes = [d * d, kv * d, kv * d, d * d, f * d, f * d, d * f] * c.n_layer  # q, k, v, o, gate, up, down
    dq_bytes = sum(n // 2 + n // 64 + 4 * -(-(n // 64) // 256) + 4 for n in sizes)
    assert type(c).__name__ == "LlamaConfig" and "tiny-llama.gguf" in out
    assert b["NF4"]["linear_bits"] == 4.5 and b["NF4 + DQ"]["linear_bits"] == 8 * dq_bytes / sum(sizes)
    assert 4.127 < b["NF4 + DQ"]["linear_bits"] < 4.2
    assert b["NF4 + DQ"]["total"] < b["NF4"]["total"] < b["float32"]["total"]
    for kinds in r["error_by_kind"].values():
        assert sorted(kinds) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        for k in kinds.values():
            assert k["layers"] == c.n_layer and k["max_abs"] > 0
            assert k["bound_ratio"] <= 1 + 1e-5                              # float32 rounding aside
    vl = r["val_loss"]
    assert all(np.isfinite(v) for v in vl.values()) and vl["NF4"] != vl["float32"] != vl["NF4 + DQ"]
    per_layer = 8 * ((d + d) + (d + kv) * 2 + (d + d) + 2 * (d + f) + (f + d))   # LoRA r=8 on every linear
    runs = r["runs"]
    assert runs["LoRA, fp32 base"]["trainable"] == runs["QLoRA, NF4+DQ"]["trainable"] == c.n_layer * per_layer
    assert all({"rougeL", "fact_recall"} <= set(run["scores"]) for run in runs.values())
    assert runs["QLoRA, NF4+DQ"]["held"] < runs["LoRA, fp32 base"]["held"]
    merge = r["merge"]
    assert merge["QLoRA merged, fp32"]["logit_diff"] < 1e-4 < merge["merged, re-NF4+DQ"]["logit_diff"]




def llama_widths(c) -> tuple[int, int, int]:
    """(d, kv, f) of a Llama config: the model width, the K/V width n_kv_head * head_dim (grouped-query attention,
    as Hugging Face's), the MLP width."""
    return c.d_model, c.n_kv_head * c.d_model // c.n_head, c.d_ff


def test_rank_sweep_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 05 with --base (the tiny random Llama): LoRA on q,v holds r (d_in + d_out) per matrix at each rank;
    LoRA on every linear layer runs once, at the rank whose count is nearest q,v's at r = 16 (a tie: the smaller)."""
    path = next(p for p in TUTORIALS if p.name.startswith("05_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    c = r["config"]
    d, kv, f = llama_widths(c)
    qv = c.n_layer * ((d + d) + (d + kv))                                                  # q, v at r = 1
    every = c.n_layer * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + f) + (f + d))         # q, k, v, o, gate, up, down
    assert type(c).__name__ == "LlamaConfig" and r["at_1"] == {"q,v": qv, "all-linear": every}
    equal = min(range(1, 65), key=lambda k: (abs(k * every - 16 * qv), k))
    counts = {(label, rank): n for label, rank, n, _, _ in r["results"]}
    assert counts == {("q,v", 1): qv, ("q,v", 4): 4 * qv, ("all-linear", equal): equal * every}
    assert f"at equal parameters: all-linear r={equal} ({equal * every:,d}" in out


def test_soft_prompts_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 08 with --base (the tiny random Llama): prompt tuning holds n d, prefix tuning n 2 L kv (keys and
    values are kv wide under grouped-query attention), LoRA on q,v r (d_in + d_out) per matrix, and no full
    fine-tuning; the learned prompt's nearest tokens are printed as the tokenizer's decoded text of their ids."""
    from minipeft.workshop.tutorial_base import load_tutorial_base  # noqa: PLC0415
    path = next(p for p in TUTORIALS if p.name.startswith("08_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    c = r["config"]
    d, kv, _ = llama_widths(c)
    counts = {run["label"]: run["trainable"] for run in r["runs"]}
    assert counts == {"prompt tuning n=20": 20 * d, "prompt tuning n=100": 100 * d,
                      "prefix tuning n=20": 20 * 2 * c.n_layer * kv, "LoRA r=8": c.n_layer * 8 * ((d + d) + (d + kv))}
    tok = load_tutorial_base("smollm2-135m-instruct", quick=True).tokenizer
    ids = r["nearest_ids"]
    assert len(ids) == 20 and all(len(row) == 5 for row in ids)
    decoded = [[tok.decode([i], skip_special_tokens=False) for i in row] for row in ids]
    assert [[t for t, _ in row] for row in r["nearest"]] == decoded
    assert not any("Ġ" in t for row in decoded for t in row)     # text, not byte-level BPE's token strings
    assert all(repr(t) in out for row in decoded for t in row)


def test_scale_curve_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 09 with --base: the curve has one more point, the LLM's (here the tiny random Llama), trained with
    prompt tuning and LoRA on every linear layer (counts in closed form) and no full fine-tuning; prompt tuning's gap
    to LoRA is reported for every size, its gap to full fine-tuning for the GPT sizes."""
    path = next(p for p in TUTORIALS if p.name.startswith("09_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    assert len(r["rows"]) == len(r["lora_gaps"]) == 3 and len(r["gaps"]) == 2
    last = r["rows"][-1]
    c = last["config"]
    d, kv, f = llama_widths(c)
    every = c.n_layer * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + f) + (f + d))
    assert type(c).__name__ == "LlamaConfig" and 0 <= last["zero_shot"] <= 1
    assert last["trainable"] == {"prompt tuning n=20": 20 * d, "LoRA r=8": 8 * every}
    assert r["lora_gaps"] == [row["acc"]["LoRA r=8"] - row["acc"]["prompt tuning n=20"] for row in r["rows"]]
    assert "prompt tuning's gap to LoRA (LoRA's accuracy minus prompt tuning's) by size" in out


def test_compare_table_on_the_llm_path(home, monkeypatch, capsys, keep_rng):
    """Tutorial 11 with --base on the tiny random Llama: every method that applies to a Llama gets a row with the
    knowledge it kept, the table says BitFit does not run and why, and the conclusions compare what each kept."""
    path = next(p for p in TUTORIALS if p.name.startswith("11_"))
    out, r = run_tutorial(path, home, monkeypatch, capsys, "--base", "smollm2-135m-instruct")
    rows = {row["method"]: row for row in r["result"].rows}
    assert "bitfit" not in rows and "not run: bitfit" in out and "tiny-llama.gguf" in r["result"].meta["base_path"]
    assert all(0 <= row["knowledge"] <= 1 for row in rows.values())
    assert "general knowledge: the base answers" in out and "English ppl" in out
