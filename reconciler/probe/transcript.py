"""The redacted, time-stamped record of one probe's SMTP dialogue.

Every line goes through the :class:`~reconciler.probe.redact.Redactor` before it is
stored, so nothing downstream (status, JSON output, logs) ever sees a credential.  Lines
and the line count are bounded: a hostile server cannot make a verdict large.
"""

from __future__ import annotations

import time
from typing import Literal

from reconciler.probe.redact import Redactor
from reconciler.probe.verdict import TranscriptLine
from reconciler.secret import MASK

MAX_LINE_CHARS = 512
MAX_LINES = 400


class Transcript:
    def __init__(self, redactor: Redactor, *, started: float | None = None) -> None:
        self.redact = redactor
        self.started = time.monotonic() if started is None else started
        self._lines: list[TranscriptLine] = []
        self._dropped = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, direction: Literal["c", "s"], line: str) -> None:
        if len(self._lines) >= MAX_LINES:
            self._dropped += 1
            return
        text = self.redact(line)
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + f"... [{len(text) - MAX_LINE_CHARS} more characters]"
        self._lines.append(TranscriptLine(direction, text, self.elapsed()))

    def client(self, line: str) -> None:
        self.add("c", line)

    def client_masked(self, prefix: str) -> None:
        """A client line whose payload is a credential: record only the command."""
        self.add("c", f"{prefix} {MASK}".strip())

    def reply(self, code: int, message: str) -> None:
        """Record a (possibly multi-line) reply as the lines the server sent."""
        parts = message.split("\n") if message else [""]
        for i, part in enumerate(parts):
            sep = " " if i == len(parts) - 1 else "-"
            self.add("s", f"{code}{sep}{part}".rstrip())

    def note(self, text: str) -> None:
        """A server-side event that is not a line (a closed connection, a timeout)."""
        self.add("s", f"[{text}]")

    def lines(self) -> tuple[TranscriptLine, ...]:
        out = list(self._lines)
        if self._dropped:
            out.append(TranscriptLine("s", f"[{self._dropped} more lines not recorded]",
                                      self.elapsed()))
        return tuple(out)
