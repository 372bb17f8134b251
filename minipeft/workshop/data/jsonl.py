"""Read and write JSON Lines: one JSON object per line, so a user's own data drops in.

`load_jsonl(path)` reads DialogSum-shaped rows `{"dialogue", "summary"}` by default; pass `required`
for another shape, or use `load_prompt_completion(path)` for generic `{"prompt", "completion"}` rows.
Errors name the file and the line; blank lines are skipped; a file without rows is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from minipeft.io_utils import atomic_write_text


def load_jsonl(path: str | os.PathLike, required: Sequence[str] = ("dialogue", "summary")) -> list[dict]:
    """Rows of a JSONL file; each must be an object whose `required` fields are strings. No rows is an error."""
    rows = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # -sig: tolerate a byte-order mark
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object {{...}}, got {type(row).__name__}")
            for field in required:
                if field not in row:
                    raise ValueError(f"{where}: missing field {field!r} (required: {list(required)}; "
                                     f"found: {sorted(row)})")
                if not isinstance(row[field], str):
                    raise ValueError(f"{where}: field {field!r} must be a string, got "
                                     f"{type(row[field]).__name__}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows (it is empty or only blank lines); expected one JSON object per "
                         f"line with the fields {list(required)}")
    return rows


def load_prompt_completion(path: str | os.PathLike) -> list[dict]:
    """Rows {"prompt", "completion"} of a JSONL file, for fine-tuning on any text-to-text data."""
    return load_jsonl(path, required=("prompt", "completion"))


def save_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSONL atomically (temp file + os.replace); a failure leaves the old file intact."""
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"save_jsonl({path}): row {i} is a {type(row).__name__}, expected a dict")
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    text = "".join(lines)
    return atomic_write_text(path, text)
