"""The repository stands alone: no doc, code or test points outside it.

Design notes, shared folders and a developer's checkout do not travel with a clone, so a
reference to them is a dead link for every user.  The guarantees and layers live in
``docs/architecture.md``; cite them there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so that this file does not match itself.
FORBIDDEN = re.compile("|".join((
    re.escape("DESIGN" + ".md"),
    re.escape("/work" + "/"),
    re.escape("../" + "shared"),
)))
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".json", ".java", ".sh",
                 ".cfg", ".ini", ".lua", ""}


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True, timeout=60).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p]


def test_no_reference_outside_the_repository() -> None:
    hits = []
    for path in _tracked_files():
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
