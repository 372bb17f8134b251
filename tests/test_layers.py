"""The book never imports the workshop, and no two packages import each other.

The book is what a student reads to learn PEFT: every module of minipeft/ outside minipeft/workshop/ (backend,
autograd, ops, nn, peft, quant, optim, loss, train, generate, memory, io_utils, errors). The workshop
(minipeft/workshop/: fast paths, data, loaders, recipes, compare, the CLI) serves it and may import it. The
package's __init__ (the short names a user imports) and __main__ are neither: they import both.

The rule is checked by parsing every file's imports (at module level and inside functions), not by a list of
allowed pairs that could go stale; the last two tests plant a violation in a copy of the tree and see it caught.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "minipeft"
FRONT = {"minipeft", "minipeft.__main__"}          # the package's __init__ and `python -m minipeft`


def module_name(path: Path, root: Path) -> str:
    parts = ("minipeft",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The minipeft modules `path` imports; `from minipeft.x import y` counts as minipeft.x.y when y is a module."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m == "minipeft" or m.startswith("minipeft.")}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p, root, modules) for p in files}


def is_workshop(module: str) -> bool:
    return module == "minipeft.workshop" or module.startswith("minipeft.workshop.")


def book_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a book module of a workshop module or of the package's front (which imports the
    workshop)."""
    return sorted(f"{m} imports {d}" for m, deps in graph.items() if m not in FRONT and not is_workshop(m)
                  for d in deps if is_workshop(d) or d in FRONT)


def package_of(module: str) -> str:
    """The unit the cycle check works on: minipeft.<x> in the book, minipeft.workshop.<x> in the workshop."""
    parts = module.split(".")
    return ".".join(parts[:3] if is_workshop(module) else parts[:2])


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of two or more packages that import each other, directly or around a loop (Tarjan's SCCs)."""
    edges: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m in FRONT:
            continue
        edges.setdefault(package_of(m), set()).update(package_of(d) for d in deps if d not in FRONT)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_book_never_imports_the_workshop():
    graph = import_graph(ROOT)
    assert "minipeft.peft.tuners.lora.op" in graph and "minipeft.workshop.fast.lora" in graph   # the walk sees both
    assert "minipeft.peft.tuners.lora.op" in graph["minipeft.workshop.fast.lora"]              # ...and their imports
    assert book_violations(graph) == []


def test_no_two_packages_import_each_other():
    assert package_cycles(import_graph(ROOT)) == []


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "minipeft"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_planted_workshop_import_in_the_book_is_caught(tmp_path):
    root = _copy(tmp_path)
    op = root / "ops" / "linalg.py"
    op.write_text(op.read_text() + "\n\ndef _late():\n    from minipeft.workshop import metrics  # noqa\n")
    assert book_violations(import_graph(root)) == ["minipeft.ops.linalg imports minipeft.workshop.metrics"]
    front = root / "nn" / "layers.py"
    front.write_text(front.read_text() + "\nimport minipeft  # noqa\n")
    assert "minipeft.nn.layers imports minipeft" in book_violations(import_graph(root))


def test_a_planted_cycle_between_packages_is_caught(tmp_path):
    root = _copy(tmp_path)
    nf4 = root / "quant" / "nf4.py"
    nf4.write_text(nf4.read_text() + "\nfrom minipeft.peft import config as _config  # noqa\n")   # peft imports quant
    assert package_cycles(import_graph(root)) == [["minipeft.peft", "minipeft.quant"]]
