"""bench/report.py: the benchmark headline is read from the records, open problems included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


report = _report()

RECORD = """# Benchmark: thing

Numbers.

## Headline

| measure | command | target | result | status |
| --- | --- | --- | --- | --- |
| speed | `./dev bench thing` | < 5 s | 3 s | met |
| memory | `./dev bench thing` | < 100 MB | 140 MB | not met |

## Open problems

- The second run crashed
  after the first.
"""


def test_rows_and_problems_are_read_from_the_record() -> None:
    rec = report.parse("thing", RECORD)
    assert rec.title == "Benchmark: thing"
    assert [(r.measure, r.status) for r in rec.rows] == [("speed", "met"),
                                                         ("memory", "not met")]
    assert rec.problems == ["The second run crashed after the first."]


def test_every_unmet_target_and_problem_is_on_the_page() -> None:
    page = report.render([(report.parse("thing", RECORD), RECORD)], "# Benchmarks\n")
    head, _, rest = page.partition("## Open problems")
    assert "| [thing](#benchmark-thing) | memory |" in head and "**not met**" in head
    problems = rest.split("## Benchmark: thing")[0]
    assert "- **thing**: memory: not met (target: < 100 MB; result: 140 MB)" in problems
    assert "- **thing**: The second run crashed after the first." in problems


def test_no_problem_is_said_plainly() -> None:
    text = RECORD.replace("| 140 MB | not met |", "| 90 MB | met |").split(
        "## Open problems")[0] + "## Open problems\n\nNone.\n"
    page = report.render([(report.parse("thing", text), text)], "# Benchmarks\n")
    assert "None: every headline target is met" in page


@pytest.mark.parametrize("broken, message", [
    (RECORD.replace("## Headline", "## Results"), "no '## Headline' section"),
    (RECORD.replace("| met |", "| fine |"), "status in"),
    (RECORD.replace("- The second run crashed", "The second run crashed"), "needs bullets"),
    (RECORD.split("## Open problems")[0], "no '## Open problems' section"),
])
def test_a_record_without_its_sections_is_refused(broken: str, message: str) -> None:
    with pytest.raises(report.RecordError, match=message):
        report.parse("thing", broken)


def test_every_record_has_its_sections() -> None:
    assert [rec.name for rec, _ in report.load()] == list(report.PARTS)
