r"""The project's texts speak of the project, not of how it was made, and their pointers into BENCHMARKS.md land.

A reader wants the current claim, its figure and how to reproduce it (command, machine, date, commit); the story
of which work period produced a number belongs to git. So no project text file (README.md, BENCHMARKS.md,
CONTRIBUTING.md, pyproject.toml, .ci/, minipeft/, tutorials/, bench/, tests/; this file excepted, as it spells
the patterns) may match one of HISTORY's patterns, case-insensitive:

    \bsessions?\b  \bissues? #?\d+  \bthe issue's\b  \blent\b  \bnot drawn\b  \bwork periods?\b  \bsprints?\b
    \bsub-?agents?\b  \baudit(s|ed|ing)?\b  \b(another|other|two|three|four|five|six) (other )?helpers?\b
    \bgive_back\b  `status`  `duplicates`  `issues`

The product has no sessions of its own (the chat has messages and a conversation, the tests a test process), so
the whole word is refused; a public tracker reference is cited by its address (nf4.py: "bitsandbytes' GitHub
thread issues/968"); code helpers (tests/lora_helpers.py) are fine.

And every pointer of the form  BENCHMARKS.md, "Title"  in those files (a line break, and a comment's "#", may
fall inside it), and every  section "Title"  inside BENCHMARKS.md, names a heading of BENCHMARKS.md exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"

HISTORY = [
    r"\bsessions?\b",
    r"\bissues? #?\d+",
    r"\bthe issue's\b",
    r"\blent\b",
    r"\bnot drawn\b",
    r"\bwork periods?\b",
    r"\bsprints?\b",
    r"\bsub-?agents?\b",
    r"\baudit(?:s|ed|ing)?\b",
    r"\b(?:another|other|two|three|four|five|six) (?:other )?helpers?\b",
    r"\bgive_back\b",
    r"`(?:status|duplicates|issues)`",
]
HISTORY_RE = re.compile("|".join(f"(?:{p})" for p in HISTORY), re.IGNORECASE)

TOP_FILES = ["README.md", "BENCHMARKS.md", "CONTRIBUTING.md", "pyproject.toml"]
TREES = [".ci", "minipeft", "tutorials", "bench", "tests"]
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}

POINTER_RE = re.compile(r'BENCHMARKS\.md,\s+"([^"]+)"')
SECTION_RE = re.compile(r'\bsection\s+"([^"]+)"', re.IGNORECASE)


def project_texts() -> dict[Path, str]:
    """Every text file of the project that speaks to a reader: path -> contents (binary files left out)."""
    paths = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and not SKIP_DIRS & set(path.relative_to(ROOT).parts) and path.suffix != ".pyc":
                paths.append(path)
    texts = {}
    for path in paths:
        if path.resolve() == Path(__file__).resolve():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def history_hits(texts: dict[Path, str]) -> list[str]:
    """'path:line: matched words' for every history pattern found."""
    hits = []
    for path, text in texts.items():
        for n, line in enumerate(text.splitlines(), 1):
            for m in HISTORY_RE.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()[:100]!r}")
    return hits


def flatten(text: str) -> str:
    """The text as one line: each line break, with the indentation and comment marker after it, becomes a space."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#+[ \t]*)?", " ", text)


def headings(markdown: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{1,4} (.+)$", markdown, flags=re.M)}


def broken_pointers(texts: dict[Path, str], benchmarks: str) -> tuple[list[str], int]:
    """Pointers whose title is no heading of BENCHMARKS.md, and how many pointers were checked."""
    titles, broken, count = headings(benchmarks), [], 0
    for path, text in texts.items():
        found = POINTER_RE.findall(flatten(text))
        if path == BENCHMARKS:
            found += SECTION_RE.findall(flatten(text))
        for title in found:
            count += 1
            if title not in titles:
                broken.append(f"{path.relative_to(ROOT)}: {title!r}")
    return broken, count


def test_no_development_history_in_project_texts():
    texts = project_texts()
    assert ROOT / "README.md" in texts and len(texts) > 100, "the scan found too few files to mean anything"
    hits = history_hits(texts)
    assert not hits, ("development history in the project's texts; state the claim and its measurement instead "
                      "(command, machine, date, commit):\n" + "\n".join(hits))


def test_every_pointer_into_benchmarks_names_a_heading():
    texts = project_texts()
    broken, count = broken_pointers(texts, BENCHMARKS.read_text(encoding="utf-8"))
    assert count >= 20, f"only {count} pointers found: the pattern no longer matches how the texts cite BENCHMARKS.md"
    assert not broken, ("pointers to BENCHMARKS.md sections that do not exist; use a heading's exact title:\n"
                        + "\n".join(broken))


def test_benchmarks_sections_say_how_to_reproduce():
    """Each topic of BENCHMARKS.md states a date and a commit, or points to the section that does; the contents
    list names every topic."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    missing = [h for h, body in sections.items()
               if h not in ("## Contents", "## Tutorials")
               and not (re.search(r"\d{4}-\d{2}-\d{2}", body) and re.search(r"\bcommit\b", body, re.I))
               and not SECTION_RE.search(body)]
    assert not missing, f"sections without a date and commit: {missing}"
    contents = re.search(r"^## Contents\n(.*?)^## ", text, flags=re.M | re.S).group(1)
    listed = {re.sub(r" \(.*\)$", "", line[2:].strip()) for line in contents.splitlines() if line.startswith("- ")}
    topics = {h[3:].strip() for h in sections if h.startswith("## ")} - {"Contents"}
    assert listed == topics, f"contents list {sorted(listed ^ topics)} differently from the headings"


def test_the_history_patterns_catch_what_they_are_for():
    """The patterns match history and leave the product's own words alone (so the scan above can fail)."""
    for text in ("Session 9 measured", "this session's changes", "issue 12's curve", "issue #968",
                 "the issue's targets", "no GPU was lent", "(`status`: not drawn)", "four other helpers' test runs",
                 "a subagent", "the work period", "give_back"):
        assert HISTORY_RE.search(text), text
    for text in ("tests/lora_helpers.py", "helpers shared by the ops", "the process's device", "issues/968",
                 "status = 0", "the learned prompt", "a sprinter"):
        assert not HISTORY_RE.search(text), text


def test_a_broken_pointer_is_reported():
    benchmarks = "# Benchmarks\n\n## Fast paths\n\nsee section \"Nowhere\"\n"
    texts = {BENCHMARKS: benchmarks,
             ROOT / "README.md": 'measured (BENCHMARKS.md,\n# "Fast paths"; BENCHMARKS.md, "Fast\n    path")'}
    broken, count = broken_pointers(texts, benchmarks)
    assert count == 3
    assert broken == ["BENCHMARKS.md: 'Nowhere'", "README.md: 'Fast path'"]
