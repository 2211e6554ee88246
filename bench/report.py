"""Assemble docs/benchmarks.md from the per-benchmark records in docs/benchmarks/.

Each benchmark writes its own record (docs/benchmarks/NAME.md) with its numbers, the
command that reproduces them and the machine; this page puts the headline ratios first and
the records below, so one file holds everything and cannot drift from the records
(tests/test_docs.py checks it).  Run: `.venv/bin/python bench/report.py`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("validate", "probe", "fleet", "operator")
OUT = ROOT / "docs" / "benchmarks.md"

SUMMARY = ROOT / "docs" / "benchmarks" / "summary.md"  # headline table, kept by hand


def _demote(text: str) -> str:
    """One heading level down, so each record nests under this page's title."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def render() -> str:
    parts = [SUMMARY.read_text().rstrip() + "\n\n"]
    for name in PARTS:
        path = ROOT / "docs" / "benchmarks" / f"{name}.md"
        if path.exists():
            parts.append(_demote(path.read_text().strip()) + "\n\n")
    return "".join(parts).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        return 0 if OUT.exists() and OUT.read_text() == text else 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
