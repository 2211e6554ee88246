"""docs/operator.md's faithfulness-test index names tests that exist.

Each row of the index names a test file, then further tests of the same file as
``::name``; a renamed or deleted test makes the index stale, and this test fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operator.md"


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")}


def index_references() -> list[tuple[str, str]]:
    text = DOC.read_text()
    section = text[text.index("### Faithfulness tests"):]
    section = section[:section.index("\n## ")]
    refs = []
    for row in section.splitlines():
        if not row.startswith("| ") or "::" not in row:
            continue
        current = ""
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?::\w+)`", row):
            file, _, name = ref.partition("::")
            current = file or current
            refs.append((current, name))
    return refs


def test_every_indexed_test_exists() -> None:
    refs = index_references()
    assert len(refs) >= 60
    missing = [f"{f}::{n}" for f, n in refs if not (ROOT / f).exists()
               or n not in _tests_in(ROOT / f)]
    assert missing == []


def test_every_emulator_test_file_is_indexed() -> None:
    indexed = {f for f, _ in index_references()}
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/test_kube_emulator*.py")}
    files.discard("tests/test_kube_emulator_docs.py")
    assert files <= indexed
