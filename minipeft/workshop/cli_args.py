"""The command line's argument types: each checks a value before any work starts (argparse exits 2 with the
message), and `numbers_as_values` lets numeric options take negative-looking values (`--lr -1e-3`)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from minipeft.io_utils import file_in_the_way


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def out_dir(text: str) -> Path:
    """A folder to write: new, or an existing folder (refused before any work if a file has the name, if a file
    stands where one of its parent folders would be, or if it is empty, which would write into the current one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path would write into the current folder; name the folder to "
                                         "write, e.g. --out my_adapter (or --out . for the current folder)")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; --out names a folder to write")
    blocker = file_in_the_way(text)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be made: {blocker} is a file, not a folder; pick another "
                                         "path")
    return Path(text)


def existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return Path(text)


def existing_dir(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return Path(text)


def comma_list(text: str) -> list[str] | str:
    """Module names separated by commas (`q_proj,v_proj`), or `all-linear` as one string."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected module names separated by commas (q_proj,v_proj) or all-linear, "
                                         f"got {text!r}")
    return "all-linear" if names == ["all-linear"] else names


def metric_name(text: str) -> str:
    """rouge, exact_match (or exact) or accuracy."""
    from minipeft.workshop.finetune import METRICS  # noqa: PLC0415

    name = {"exact": "exact_match"}.get(text, text)
    if name not in METRICS:
        raise argparse.ArgumentTypeError(f"expected one of rouge, exact (exact_match), accuracy; got {text!r}")
    return name


def method_list(text: str) -> tuple[str, ...]:
    from minipeft.workshop.compare import METHOD_RECIPES  # noqa: PLC0415 (imports every method: only when needed)

    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in METHOD_RECIPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}; choose from {list(METHOD_RECIPES)}")
    return names



_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-inf(inity)?$|^-nan$", re.IGNORECASE)


def numbers_as_values(argv: list[str]) -> list[str]:
    """`--opt -1e-3` -> `--opt=-1e-3`, so argparse reads a negative-looking number as the option's value (it takes
    `-1e-3` for an option and says "expected one argument"); the option's own type then accepts or refuses it."""
    out: list[str] = []
    for a in argv:
        if out and _NUMBER.match(a) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out
