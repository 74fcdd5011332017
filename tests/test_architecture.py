"""The shape of the library (DESIGN.md, "course_lib: one idea per module"), enforced.

Imports point one way: techniques never import deployment, figures, checkers, recipes or records;
the foundations import no technique. Every module says in its docstring what it holds. The
notebooks and the benchmark use only modules that exist.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "course_lib"
TECHNIQUES = {"pruning", "quantization", "lowrank", "distillation"}
UPPER = {"deploy", "plots", "checks", "recipes", "records", "bert", "robustness", "runtimes"}
FOUNDATIONS = {"data", "models", "measure", "_validate", "huffman", "env"}


def _modules():
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(parts) or "__init__", path


def _imported(path: Path) -> set[str]:
    """Top-level course_lib modules that ``path`` imports anywhere (module level or inside functions)."""
    package = ["course_lib", *path.parent.relative_to(LIB).parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            targets = [mod + [a.name] for a in node.names] if not node.module else [mod]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        out |= {t[1] for t in targets if len(t) > 1 and t[0] == "course_lib"}
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in _modules():
        top = name.split(".")[0]
        graph.setdefault(top, set()).update(_imported(path) - {top})
    return graph


def test_the_import_graph_is_read_correctly():
    g = _graph()
    assert "training" in g["records"] and "measure" in g["records"]
    assert {"deploy", "pruning"} <= g["recipes"]


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_techniques_do_not_import_upward(technique):
    bad = _graph()[technique] & UPPER
    assert not bad, f"{technique} imports {sorted(bad)}: deployment, figures and recipes depend on techniques"


@pytest.mark.parametrize("module", sorted(FOUNDATIONS))
def test_foundations_import_no_technique(module):
    bad = _graph().get(module, set()) & (TECHNIQUES | UPPER)
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("name,path", list(_modules()), ids=[n for n, _ in _modules()])
def test_every_module_says_what_it_holds(name, path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 5, f"course_lib/{path.relative_to(LIB)} needs a docstring"


REMOVED = ("pipeline", "codec", "transformer", "results")


@pytest.mark.parametrize("path", sorted([*(ROOT / "notebooks" / "src").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                                         *(ROOT / "scripts").glob("*.py"), *LIB.rglob("*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_uses_a_removed_module(path):
    text = path.read_text()
    for old in REMOVED:
        pattern = rf"(from course_lib(\.| import ){old}\b|from \.{old} import|from \. import .*\b{old}\b|\bcourse_lib\.{old}\b)"
        if old == "pipeline":  # the chapter-5 checkers keep their name: checks.pipeline
            pattern = r"(from course_lib import [^\n]*\bpipeline\b|from \.pipeline import (?!\*)|\bcourse_lib\.pipeline\b)"
        if path.parent.name == "checks":  # the checkers are named by chapter: checks.transformer is chapter 6's
            pattern = rf"(from course_lib(\.| import ){old}\b|\bcourse_lib\.{old}\b|from \.\.{old} import|from \.\. import .*\b{old}\b)"
        assert not re.search(pattern, text), f"{path.name} still uses course_lib.{old}"
