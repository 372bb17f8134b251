"""The base a tutorial runs on: the project's mini GPT (the default, for speed) or a pretrained LLM (`--base`).

    python tutorials/03_lora_finetune.py                                   # the mini GPT
    python tutorials/03_lora_finetune.py --base smollm2-135m-instruct      # the real model (fetched once, cached)
    python tutorials/03_lora_finetune.py --base smollm2-135m-instruct --quick   # a tiny random Llama, seconds

With --quick and --base, the tutorial runs the real model's code path on a tiny random Llama written as a GGUF
file (minipeft.workshop.llm.tiny), so the test suite covers it without the real file.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from minipeft.workshop.llm import load_pretrained
from minipeft.workshop.llm.hub import MODELS
from minipeft.workshop.llm.tiny import write_tiny_llama
from minipeft.workshop.pretrain import BaseModel, load_base_model

MINI = "mini-gpt"


def add_base_option(parser: argparse.ArgumentParser) -> None:
    """--base: the mini GPT (default) or a named pretrained LLM."""
    parser.add_argument("--base", default=MINI, choices=[MINI, *sorted(MODELS)],
                        help="the model to fine-tune: the project's mini GPT (default, fast) or a pretrained LLM, "
                             "fetched once and cached")


def is_llm(base: str) -> bool:
    """Whether `base` names a pretrained LLM rather than the mini GPT."""
    return base != MINI


def load_tutorial_base(base: str, quick: bool) -> BaseModel:
    """The model and tokenizer a tutorial fine-tunes: the mini GPT (the tiny one with quick), or the pretrained
    LLM `base` (with quick a tiny random Llama on the same code path, seed 0)."""
    if not is_llm(base):
        return load_base_model(quick=quick, progress=not quick)
    if not quick:
        return load_pretrained(base)
    with tempfile.TemporaryDirectory() as d:
        return load_pretrained(write_tiny_llama(os.path.join(d, "tiny-llama.gguf"), seed=0))
