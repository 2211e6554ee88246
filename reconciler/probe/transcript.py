"""The redacted, time-stamped record of one probe's SMTP dialogue.

Every line goes through the :class:`~reconciler.probe.redact.Redactor` before it is
stored (secrets masked in every form, control characters and terminal escapes made
visible), so nothing downstream (status, JSON output, ``test -v``, ``describe``, logs) ever
sees a credential or a raw escape.  Lines and the line count are bounded: a hostile
server cannot make a verdict large.
"""

from __future__ import annotations

import time
from typing import Literal

from reconciler.probe.redact import Redactor, cap
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
        text = cap(self.redact(line, one_line=True), MAX_LINE_CHARS, self.redact)
        self._lines.append(TranscriptLine(direction, text, self.elapsed()))

    def client(self, line: str) -> None:
        self.add("c", line)

    def client_masked(self, prefix: str) -> None:
        """A client line whose payload is a credential: record only the command."""
        self.add("c", f"{prefix} {MASK}".strip())

    def reply(self, code: int, message: str) -> None:
        """Record a (possibly multi-line) reply as the lines the server sent."""
        # Masked as a whole first: a secret split over two reply lines is one secret.
        parts = self.redact.mask(message).split("\n") if message else [""]
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
