"""Generated docs must match what generates them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_page_is_assembled_from_the_records() -> None:
    # -P: bench/operator.py would shadow the standard library's operator module
    result = subprocess.run([sys.executable, "-P", "bench/report.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/benchmarks.md is stale: run bench/report.py"


def test_readme_starts_with_the_two_commands() -> None:
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if x.strip()]
    block = lines[lines.index("```sh") + 1:]
    assert block[0].startswith("./dev demo") and block[1].startswith("./dev test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec ./dev test" in ci
