"""Data: a seeded offline corpus and tasks, JSONL io, a byte-level BPE tokenizer, and batching."""

from minipeft.workshop.data.batching import (
    IGNORE_INDEX,
    collate_sft,
    encode_corpus,
    encode_rows,
    encode_sft,
    lm_batches,
    sft_batches,
    split_for_bpe,
)
from minipeft.workshop.data.generator import (
    TASKS,
    Task,
    get_task,
    make_corpus,
    make_dialogsum,
    make_qa,
    make_sentiment,
    make_splits,
)
from minipeft.workshop.data.jsonl import load_jsonl, load_prompt_completion, save_jsonl
from minipeft.workshop.data.tokenizer import Tokenizer

__all__ = [
    "IGNORE_INDEX", "TASKS", "Task", "Tokenizer", "collate_sft", "encode_corpus", "encode_rows", "encode_sft",
    "get_task", "lm_batches", "load_jsonl", "load_prompt_completion", "make_corpus", "make_dialogsum", "split_for_bpe",
    "make_qa", "make_sentiment", "make_splits", "save_jsonl", "sft_batches",
]
