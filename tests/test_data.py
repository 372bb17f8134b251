"""The seeded generator, the task formats and splits, and the JSONL loader."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter

import pytest

from minipeft.workshop.data import (
    TASKS,
    load_jsonl,
    load_prompt_completion,
    make_corpus,
    make_dialogsum,
    make_qa,
    make_sentiment,
    make_splits,
    save_jsonl,
)
from minipeft.workshop.data import vocab as V
from minipeft.workshop.data.dialogues import SCENARIOS, dialogue_example

MAKERS = [make_corpus, make_dialogsum, make_qa, make_sentiment]
PROMPT_MARKERS = ("Summarize the following", "Summary:", "Answer the question", "Question:", "Sentiment:")
TIME = re.compile(r"\b\d{1,2}(?::\d\d)? [ap]m\b")


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__)
def test_same_seed_same_output_different_seed_different(make):
    assert make(40, seed=3) == make(40, seed=3)
    assert make(40, seed=3) != make(40, seed=4)


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__)
def test_generators_leave_global_random_alone(make):
    random.seed(123)
    state = random.getstate()
    make(20, seed=0)
    assert random.getstate() == state


def test_corpus_is_varied_english_without_task_prompts():
    docs = make_corpus(600, seed=0)
    words = [len(d.split()) for d in docs]
    assert min(words) >= 40 and max(words) <= 150
    assert len(set(docs)) == len(docs)
    assert not [d for d in docs if any(m in d for m in PROMPT_MARKERS)]
    assert sum("#Person1#:" in d for d in docs) > 60  # dialogues are part of the language to learn
    vocab = Counter(w for d in docs for w in re.findall(r"[A-Za-z']+", d))
    assert len(vocab) > 1500
    assert sum(name in vocab for name in V.FEMALE_NAMES + V.MALE_NAMES) > 90


def test_dialogues_have_the_dialogsum_shape():
    rng = random.Random(0)
    examples = [dialogue_example(rng) for _ in range(600)]
    assert len({e["scenario"] for e in examples}) == len(SCENARIOS) >= 8
    for e in examples:
        lines = e["dialogue"].split("\n")
        assert 4 <= len(lines) <= 8
        for i, line in enumerate(lines):
            assert line.startswith(("#Person1#: ", "#Person2#: ")[i % 2]), line
        assert len(e["dialogue"].split()) <= 110 and len(e["summary"].split()) <= 30
        assert "Summary" not in e["dialogue"]


def test_summary_facts_come_from_the_dialogue():
    entities = (V.FEMALE_NAMES + V.MALE_NAMES + V.SURNAMES + list(V.MEETING_PLACES) + list(V.WORKPLACES)
                + V.CITIES + list(V.RESTAURANTS) + list(V.COMPANIES) + list(V.ITEMS) + list(V.OBJECTS))
    examples = make_dialogsum(500, seed=1)
    for e in examples:
        d, s = e["dialogue"], e["summary"]
        shared = [w for w in entities if re.search(rf"\b{re.escape(w)}\b", s) and w in d]
        assert shared, s
        for fact in TIME.findall(s) + re.findall(r"\d+ dollars", s) + [x for x in V.DAYS if x in s]:
            assert fact in d, (fact, s, d)
    assert len({e["summary"] for e in examples}) > 0.98 * len(examples)


def test_summary_states_the_final_decision_not_the_first_proposal():
    rng = random.Random(5)
    refused = 0
    for _ in range(300):
        turns, summary = SCENARIOS["meeting"](rng)
        first = re.search(r"on (\w+day)", turns[0]).group(1)
        if "busy" in turns[1] or "doesn't work" in turns[1]:
            refused += 1
            assert f"on {first}" not in summary
    assert refused > 50


def test_qa_answers_are_short_spans_of_the_passage():
    examples = make_qa(600, seed=2)
    for e in examples:
        assert e["answer"] in e["passage"]
        assert 1 <= len(e["answer"].split()) <= 3
    kinds = Counter(" ".join(e["question"].split()[:2]) for e in examples)
    assert len(kinds) >= 8


def test_sentiment_is_balanced_and_carried_by_words_not_a_marker():
    for n in (10, 11, 500):
        counts = Counter(e["label"] for e in make_sentiment(n, seed=0))
        assert set(counts) <= {"positive", "negative"} and abs(counts["positive"] - counts["negative"]) <= 1
    rows = make_sentiment(2000, seed=1)
    pos = [set(re.findall(r"[a-z]+", r["text"].lower())) for r in rows if r["label"] == "positive"]
    neg = [set(re.findall(r"[a-z]+", r["text"].lower())) for r in rows if r["label"] == "negative"]
    for w in set().union(*pos):  # no word is present in (almost) every positive and no negative review
        assert not (sum(w in p for p in pos) > 0.9 * len(pos) and sum(w in q for q in neg) < 0.1 * len(neg)), w
    assert len({r["text"] for r in rows}) > 0.9 * len(rows)


def test_tasks_format_prompts_as_documented():
    ex = {"dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet."}
    assert TASKS["dialogsum"].to_prompt_completion(ex) == (
        "Summarize the following conversation.\n\n#Person1#: Hi.\n#Person2#: Hello.\n\nSummary: ", "They greet.")
    qa = {"passage": "Ann works at the bank.", "question": "Where does Ann work?", "answer": "the bank"}
    assert TASKS["qa"].to_prompt_completion(qa) == (
        "Answer the question using the passage.\n\nPassage: Ann works at the bank.\n\n"
        "Question: Where does Ann work?\n\nAnswer: ", "the bank")
    assert TASKS["sentiment"].to_prompt_completion({"text": "Great {food}.", "label": "positive"}) == (
        "Classify the sentiment of the review.\n\nReview: Great {food}.\n\nSentiment: ", "positive")
    assert {k: t.metric for k, t in TASKS.items()} == {
        "dialogsum": "rouge", "qa": "exact_match", "sentiment": "accuracy"}
    with pytest.raises(ValueError, match="summary"):
        TASKS["dialogsum"].to_prompt_completion({"dialogue": "x"})


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_disjoint_sized_and_stable(task):
    s = make_splits(task, 300, 40, 60, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [300, 40, 60]
    t = TASKS[task]
    prompts = {k: [t.to_prompt_completion(e)[0] for e in v] for k, v in s.items()}
    all_prompts = prompts["train"] + prompts["val"] + prompts["test"]
    assert len(set(all_prompts)) == len(all_prompts)
    assert make_splits(task, 100, 40, 60, seed=0)["test"] == s["test"]  # more training data, same test set
    assert make_splits(task, 300, 40, 60, seed=1)["test"] != s["test"]
    if t.labels:
        for rows in s.values():
            c = Counter(e["label"] for e in rows)
            assert abs(c["positive"] - c["negative"]) <= 1


def test_unknown_task_and_negative_sizes_are_rejected():
    with pytest.raises(ValueError, match="known tasks"):
        make_splits("translation", 1, 1, 1)
    with pytest.raises(ValueError, match="n_val"):
        make_splits("qa", 1, -1, 1)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_rows_and_skips_blank_lines(tmp_path):
    p = _write(tmp_path / "d.jsonl", ['{"dialogue": "a", "summary": "b", "id": 1}', "", "   ",
                                      '{"dialogue": "c\\nd", "summary": "é"}'])
    assert load_jsonl(p) == [{"dialogue": "a", "summary": "b", "id": 1}, {"dialogue": "c\nd", "summary": "é"}]
    q = _write(tmp_path / "pc.jsonl", ['{"prompt": "2+2=", "completion": "4"}'])
    assert load_prompt_completion(q) == [{"prompt": "2+2=", "completion": "4"}]


@pytest.mark.parametrize("bad, message", [
    ('{"dialogue": "a", "summary": ', "malformed JSON"),
    ('{"dialogue": "a"}', "missing field 'summary'"),
    ('{"dialogue": "a", "summary": 3}', "'summary' must be a string"),
    ('["dialogue", "summary"]', "expected a JSON object"),
])
def test_load_jsonl_errors_name_the_file_and_line(tmp_path, bad, message):
    p = _write(tmp_path / "bad.jsonl", ['{"dialogue": "a", "summary": "b"}', "", bad])
    with pytest.raises(ValueError, match=message) as e:
        load_jsonl(p)
    assert f"{p}, line 3" in str(e.value)


def test_load_jsonl_names_the_line_that_is_not_utf8_and_accepts_a_bom(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "caf\xe9", "summary": "b"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{p}, line 2: not UTF-8 text (byte 0xe9 at column 18)")):
        load_jsonl(p)
    p.write_bytes(b'\xef\xbb\xbf{"dialogue": "a", "summary": "b"}\n')
    assert load_jsonl(p) == [{"dialogue": "a", "summary": "b"}]


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_a_jsonl_file_without_rows_is_an_error_not_an_empty_list(tmp_path, text):
    p = tmp_path / "empty.jsonl"
    p.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{p} holds no rows")):
        load_jsonl(p)


def test_save_jsonl_round_trips(tmp_path):
    rows = [{"dialogue": "#Person1#: Hi 日本\n#Person2#: \"yo\"", "summary": "ok"}, {"dialogue": "", "summary": ""}]
    p = save_jsonl(tmp_path / "sub" / "out.jsonl", rows)
    assert load_jsonl(p) == rows
    assert [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] == rows


def test_save_jsonl_is_atomic(tmp_path, monkeypatch):
    p = save_jsonl(tmp_path / "out.jsonl", [{"dialogue": "old", "summary": "old"}])
    before = p.read_bytes()
    with pytest.raises(TypeError):
        save_jsonl(p, [{"dialogue": "new", "summary": object()}])  # not JSON-serializable
    with pytest.raises(TypeError, match="row 1"):
        save_jsonl(p, [{"dialogue": "new", "summary": "x"}, ["not", "a", "dict"]])

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_jsonl(p, [{"dialogue": "new", "summary": "new"}])
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind
