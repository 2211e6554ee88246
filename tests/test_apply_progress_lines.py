"""``apply``'s progress lines on stderr when it is not a terminal (cmd_apply.Progress).

The lines of results that arrive together are written together (one write), never more
than ``LINES_EVERY`` seconds after the first of them, all of them in order, and every line
is out when the progress ends.  Before, each line was its own write (and flush): with
stderr a pipe, each one woke the reader, which could take this process's CPU at once.
``--watch`` lines (stamped) are still written one at a time, as they happen.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.cli import cmd_apply
from reconciler.stores.base import ObjectRef


class CountingStderr(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.on_write: Any = None

    def write(self, s: str) -> int:
        self.writes += 1
        if self.on_write is not None:
            self.on_write()
        return super().write(s)

    def isatty(self) -> bool:
        return False


@dataclass
class Result:
    ref: ObjectRef
    status: dict[str, Any] = field(default_factory=lambda: {"conditions": [
        {"type": "Ready", "status": "True", "reason": "TestPassed", "message": "ok"}]})
    action: str = "tested"
    tested: bool = True


def _results(n: int) -> list[Result]:
    return [Result(ObjectRef("ExternalSmtp", "default", f"relay-{i:03d}")) for i in range(n)]


def _stderr(monkeypatch: pytest.MonkeyPatch) -> CountingStderr:
    # In the test's body, not a fixture: pytest sets its own sys.stderr again between a
    # fixture's setup and the test.
    err = CountingStderr()
    monkeypatch.setattr("sys.stderr", err)
    return err


def test_lines_of_one_turn_are_one_write_and_all_are_out_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    async def run() -> int:
        with cmd_apply.Progress(50, enabled=True) as progress:
            for r in _results(50):
                progress(r)
            written_during_the_turn = stderr.writes
        return written_during_the_turn

    assert asyncio.run(run()) == 0  # fails before: one write per line (50)
    lines = stderr.getvalue().splitlines()
    assert lines == [f"passed   ExternalSmtp/default/relay-{i:03d}: Ready=True (TestPassed)"
                     for i in range(50)]
    assert stderr.writes == 1


def test_lines_are_written_within_the_interval_while_the_apply_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    async def run() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        with cmd_apply.Progress(3, enabled=True) as progress:
            for r in _results(3):
                progress(r)
            timer = progress._timer
            assert timer is not None
            # Written by the loop's timer while the progress is still open, not held
            # until its end (waited for with a bound, not slept for).
            assert timer.when() - loop.time() <= cmd_apply.LINES_EVERY
            written = asyncio.Event()
            stderr.on_write = written.set
            async with asyncio.timeout(10):
                await written.wait()
            return stderr.writes, stderr.getvalue()

    writes, text = asyncio.run(run())
    assert writes == 1 and len(text.splitlines()) == 3


def test_a_not_ready_result_keeps_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    failed = Result(ObjectRef("ExternalSmtp", "default", "down"), status={"conditions": [
        {"type": "Ready", "status": "False", "reason": "ConnectionRefused",
         "message": "the relay refused the connection"}]})

    async def run() -> None:
        with cmd_apply.Progress(1, enabled=True) as progress:
            progress(failed)

    asyncio.run(run())
    assert stderr.getvalue() == ("failed   ExternalSmtp/default/down: Ready=False "
                                 "(ConnectionRefused): the relay refused the connection\n")


def test_watch_lines_are_written_as_they_happen(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    async def run() -> list[int]:
        seen = []
        stamped = cmd_apply.Progress(0, enabled=True, stamp=True)
        for r in _results(3):
            stamped(r)
            seen.append(stderr.writes)
        return seen

    seen = asyncio.run(run())
    assert seen[0] >= 1 and seen[0] < seen[1] < seen[2]


def test_outside_an_event_loop_a_line_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    progress = cmd_apply.Progress(1, enabled=True)
    progress(_results(1)[0])
    assert stderr.getvalue().startswith("passed   ExternalSmtp/default/relay-000")
