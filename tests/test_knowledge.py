"""The forgetting data (knowledge questions, English text): the files' format and recorded base result, the
scoring rule, knowledge_score and text_perplexity on a tiny random Llama, and the real model's own result."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from llm_files import real_gguf_path

import minipeft as mp
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.workshop.chat import chat_reply
from minipeft.workshop.data import knowledge as kn
from minipeft.workshop.data.knowledge import is_correct, knowledge_score, load_knowledge, normalize, text_perplexity
from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.llm.tiny import write_tiny_llama

META = json.loads(kn.KNOWLEDGE_FILE.with_suffix(".meta.json").read_text(encoding="utf-8"))
ENGLISH_META = json.loads(kn.ENGLISH_FILE.with_suffix(".meta.json").read_text(encoding="utf-8"))


# ---- the data files ---------------------------------------------------------------------------------------------
def test_kept_questions_are_at_least_50_distinct_rows_of_the_candidates():
    rows, candidates = load_knowledge(), load_knowledge(kn.CANDIDATES_FILE)
    assert len(rows) >= 50
    assert len({normalize(r["question"]) for r in rows}) == len(rows)
    assert len({normalize(r["question"]) for r in candidates}) == len(candidates)
    assert all(r in candidates for r in rows)


def test_meta_states_k_of_n_and_k_is_the_row_count():
    rows, candidates = load_knowledge(), load_knowledge(kn.CANDIDATES_FILE)
    assert (META["kept"], META["candidates"]) == (len(rows), len(candidates))
    assert META["summary"].startswith(f"kept {len(rows)} of {len(candidates)} candidates answered correctly by "
                                      "SmolLM2-135M-Instruct zero-shot, greedy")
    assert {"date", "commit", "command"} <= set(META) and len(META["commit"]) == 40
    assert sum(v["kept"] for v in META["by_kind"].values()) == len(rows)
    assert sum(v["candidates"] for v in META["by_kind"].values()) == len(candidates)
    # every candidate is either kept, with the reply that passed, or rejected, with the reply that failed
    assert [r["question"] for r in META["kept_replies"]] == [r["question"] for r in rows]
    assert all(is_correct(k["reply"], r["answers"], r["kind"]) for k, r in zip(META["kept_replies"], rows, strict=True))
    rejected = {r["question"]: r for r in META["rejected"]}
    assert len(rejected) + len(rows) == len(candidates)
    for c in candidates:
        if c["question"] in rejected:
            assert not is_correct(rejected[c["question"]]["reply"], c["answers"], c["kind"]), c


def test_no_question_contains_its_answer():
    """An echo of the question must not score: no accepted answer occurs in a question whose kind is scored by
    containment (instruction and yes/no questions are scored by the whole reply and its start)."""
    for row in load_knowledge(kn.CANDIDATES_FILE):
        if row["kind"] not in ("instruction", "yesno"):
            assert not is_correct(row["question"], row["answers"], row["kind"]), row


def test_english_text_is_named_public_domain_and_long_enough():
    assert "public domain" in ENGLISH_META["license"] and "Declaration of Independence" in ENGLISH_META["title"]
    text = kn.ENGLISH_FILE.read_text(encoding="utf-8")
    assert text.startswith("When in the Course of human events") and text.rstrip().endswith("our sacred Honor.")
    assert 1500 <= ENGLISH_META["measured"]["tokens"] <= 3000


@pytest.mark.parametrize("line, field", [
    ('{"question": "Q?", "answers": ["a"]}', "exactly the fields"),
    ('{"question": "", "answers": ["a"], "kind": "fact"}', "field 'question'"),
    ('{"question": "Q?", "answers": [], "kind": "fact"}', "field 'answers'"),
    ('{"question": "Q?", "answers": "a", "kind": "fact"}', "field 'answers'"),
    ('{"question": "Q?", "answers": ["?!"], "kind": "fact"}', "field 'answers'"),
    ('{"question": "Q?", "answers": ["a"], "kind": "trivia"}', "field 'kind'"),
    ('{"question": "Q?", "answers": ["a"], "kind": "fact"', "not valid JSON"),
])
def test_a_bad_row_is_refused_naming_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "k.jsonl"
    path.write_text('{"question": "Fine?", "answers": ["yes"], "kind": "yesno"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"line 2: .*{field}") as e:
        load_knowledge(path)
    assert str(path) in str(e.value)


# ---- the scoring rule -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, answers, kind, expected", [
    ("The capital of France is Paris.", ["Paris"], "capital", True),
    ("PARIS", ["Paris"], "capital", True),
    ("Parisian cafes are famous.", ["Paris"], "capital", False),      # whole words only
    ("It is not Paris.", ["Paris"], "capital", False),                # a negated answer does not count
    ("It isn't Paris, it's Lyon.", ["Paris"], "capital", False),
    ("Not Lyon: Paris.", ["Paris"], "capital", True),                 # the negation was of another word
    ("The capital is Brasília.", ["Brasilia"], "capital", True),      # accents dropped
    ("There are 1,000 grams in a kilogram.", ["1000"], "unit", True),
    ("There are 10000 grams.", ["1000"], "unit", False),
    ("7 times 8 equals 56.", ["56"], "arithmetic", True),
    ("The capital of India is New Delhi.", ["New Delhi"], "capital", True),
    ("It is new, and Delhi is old.", ["New Delhi"], "capital", False),  # a multi-word answer is one sequence
    ("Yes.", ["yes"], "instruction", True),
    ("Yes, I can do that.", ["yes"], "instruction", False),           # an instruction asks for only the answer
    ("1, 2, 3, 4, 5", ["1 2 3 4 5"], "instruction", True),
    ("Yes, the Sun is a star.", ["yes"], "yesno", True),
    ("No, the Sun is not a star. But yes, it shines.", ["yes"], "yesno", False),  # the reply's first word decides
    ("I think yes.", ["yes"], "yesno", False),
    ("", ["Paris"], "capital", False),
])
def test_scoring_rule(reply, answers, kind, expected):
    assert is_correct(reply, answers, kind) is expected


# ---- knowledge_score and text_perplexity on a tiny random Llama --------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_pretrained(write_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny.gguf", seed=3), progress=False)


def add_lora(model):
    """A LoRA adapter on q_proj and v_proj whose B is not zero, so the adapter changes what the model says."""
    mp.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    rng = np.random.default_rng(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data[...] = mp.backend.xp().asarray(rng.normal(0, 0.5, p.shape), dtype=p.data.dtype)
    return peft


ITEMS = [{"question": "What is the capital of France?", "answers": ["Paris"], "kind": "capital"},
         {"question": "What is 2 + 2?", "answers": ["4"], "kind": "arithmetic"},
         {"question": "Reply with only the word yes.", "answers": ["yes"], "kind": "instruction"}]


def replies_of(model, tok) -> list[str]:
    return [chat_reply(model, tok, [{"role": "user", "content": it["question"]}], max_new_tokens=6) for it in ITEMS]


def test_knowledge_score_replies_are_the_chat_replies_of_the_model_with_its_adapter(tiny, keep_rng):
    tok = tiny.tokenizer
    base = replies_of(tiny.model, tok)
    assert knowledge_score(tiny.model, tok, ITEMS, max_new_tokens=6)["replies"] == base
    peft = add_lora(tiny.model)
    try:
        adapted = knowledge_score(peft, tok, ITEMS, max_new_tokens=6)["replies"]
        assert adapted == replies_of(peft, tok) and adapted != base
        with peft.disable_adapter():
            assert knowledge_score(peft, tok, ITEMS, max_new_tokens=6)["replies"] == base
    finally:
        peft.unload()


def test_knowledge_score_counts_overall_and_by_kind(monkeypatch):
    replies = iter(["It is Paris.", "It is 5.", "yes", "6"])
    monkeypatch.setattr(kn, "chat_reply", lambda *args, **kwargs: next(replies))
    items = [*ITEMS, {"question": "What is 3 + 3?", "answers": ["6"], "kind": "arithmetic"}]
    res = knowledge_score(None, None, items)
    assert res["correct"] == [True, False, True, True] and res["accuracy"] == 0.75
    assert res["by_kind"] == {"capital": 1.0, "arithmetic": 0.5, "instruction": 1.0}
    assert res["replies"] == ["It is Paris.", "It is 5.", "yes", "6"]


TEXT = "He has refused his Assent to Laws, the most wholesome and necessary for the public good."


def direct_nll(model, ids: np.ndarray, t: int, start: int) -> float:
    """-log p(ids[t] | ids[start:t]) from the model's logits, in float64: one forward per token."""
    with mp.no_grad():
        logits = mp.to_numpy(model(ids[None, start:t])[0].data)[0, -1].astype(np.float64)
    return float(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[ids[t]])


@pytest.mark.parametrize("max_len, stride", [(None, None), (16, 16), (16, 5), (7, 1)])
def test_perplexity_is_exp_of_the_mean_nll_each_token_scored_once(tiny, max_len, stride):
    """Token t (t >= 1) is scored by the first window that reaches it: the one starting at
    s * ceil((t - max_len) / s), with the tokens from there as its context. float32 logits, float64 sums: 1e-5."""
    tok = tiny.tokenizer
    ids = np.asarray(tok.encode(TEXT))
    m = max_len or ids.size
    s = stride or m
    nll = [direct_nll(tiny.model, ids, t, max(0, math.ceil((t - m) / s)) * s) for t in range(1, ids.size)]
    got = text_perplexity(tiny.model, tok, TEXT, max_len=max_len, stride=stride)
    assert got == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


def test_perplexity_of_one_window_is_exp_of_the_training_loss(tiny):
    ids = np.asarray(tiny.tokenizer.encode(TEXT))
    with mp.no_grad():
        loss = float(tiny.model(ids[None, :-1], ids[None, 1:])[1].data)
    assert text_perplexity(tiny.model, tiny.tokenizer, TEXT) == pytest.approx(math.exp(loss), rel=1e-5)


def test_perplexity_with_an_adapter_is_the_adapted_model_s(tiny, keep_rng):
    tok, ids = tiny.tokenizer, np.asarray(tiny.tokenizer.encode(TEXT))
    base = text_perplexity(tiny.model, tok, TEXT, max_len=8, stride=1)
    peft = add_lora(tiny.model)
    try:
        nll = [direct_nll(peft, ids, t, max(0, t - 8)) for t in range(1, ids.size)]
        peft.train()
        got = text_perplexity(peft, tok, TEXT, max_len=8, stride=1)
        assert peft.training                                 # left in the mode it came in
        assert got == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
        assert abs(got / base - 1) > 1e-3
        with peft.disable_adapter():
            assert text_perplexity(peft, tok, TEXT, max_len=8, stride=1) == pytest.approx(base, rel=1e-6)
    finally:
        peft.unload()


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_len=513), "max_len=513 is longer than the 512 positions"),
    (dict(max_len=8, stride=9), "stride=9 > max_len=8"),
    (dict(max_len=0), "max_len must be an int >= 1"),
    (dict(text="a"), "at least 2"),
])
def test_perplexity_refuses_bad_arguments(tiny, kwargs, match):
    text = kwargs.pop("text", TEXT)
    with pytest.raises(ValueError, match=match):
        text_perplexity(tiny.model, tiny.tokenizer, text, **kwargs)


def test_the_measuring_script_runs_quick(capsys):
    path = Path(__file__).parent.parent / "bench" / "knowledge_zero_shot.py"
    spec = importlib.util.spec_from_file_location("knowledge_zero_shot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--quick"])
    assert res["candidates"] == 3 and "kept" in capsys.readouterr().out


# ---- the real model ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    return load_pretrained(real_gguf_path(), progress=False)


@pytest.mark.slow
def test_the_real_base_model_answers_every_kept_question(smol):
    res = knowledge_score(smol.model, smol.tokenizer, load_knowledge())
    assert res["accuracy"] == 1.0, [r for r, ok in zip(res["replies"], res["correct"], strict=True) if not ok]
    assert res["replies"] == [r["reply"] for r in META["kept_replies"]]


@pytest.mark.slow
def test_the_real_base_model_reads_the_english_text_at_the_recorded_perplexity(smol):
    ppl = text_perplexity(smol.model, smol.tokenizer, kn.ENGLISH_FILE.read_text(encoding="utf-8"))
    # float32 sums in another order (threads, BLAS) move the mean NLL by ~1e-6 relative; the record has 4 decimals
    assert ppl == pytest.approx(ENGLISH_META["measured"]["base_perplexity"], abs=2e-4)
