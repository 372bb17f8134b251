"""The real model for the tests: where its file is cached (tests skip, with the reason, when absent), its template."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipeft.workshop.pretrain import minipeft_home

REAL_NAME = "smollm2-135m-instruct"
REAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# the template SmolLM2-135M-Instruct carries (tokenizer.chat_template in its GGUF file, chat_template on the hub)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def real_gguf_path() -> Path:
    """The cached SmolLM2-135M-Instruct GGUF file, or pytest.skip saying where it was looked for."""
    path = minipeft_home() / REAL_NAME / REAL_FILE
    if not path.is_file():
        pytest.skip(f"the real model's file is not cached at {path} (fetch it once: python -c \"from "
                    "minipeft.workshop.llm.hub import fetch; fetch('smollm2-135m-instruct')\", or set MINIPEFT_HOME)")
    return path
