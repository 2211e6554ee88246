"""The redacted, time-stamped record of one probe's SMTP dialogue.

Every line goes through the :class:`~reconciler.probe.redact.Redactor` before anyone can
read it (secrets masked in every form, control characters and terminal escapes made
visible), so nothing downstream (status, JSON output, ``test -v``, ``describe``, logs) ever
sees a credential or a raw escape.  Lines and the line count are bounded: a hostile
server cannot make a verdict large.

**Built lazily.**  Redaction is the most expensive part of a test that passes (every
token of every reply is checked in every encoding of every secret), and most transcripts
are never read: ``apply`` keeps them in the history only for failed tests, and
``test`` prints them only with ``-v``.  So the dialogue is recorded as it happened (in
this process's memory only, like the secrets the redactor knows) and the redacted lines
are built on first read, by :meth:`Transcript.lines` or a :class:`TranscriptView`; the
raw record is dropped then.  A lazily built line is masked with every secret the
redactor knows by the end of the test (a superset of what it knew when the line went
by), so laziness never masks less.  A view pickles as its redacted lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

from reconciler.probe.redact import Redactor, cap
from reconciler.probe.verdict import TranscriptLine
from reconciler.secret import MASK

MAX_LINE_CHARS = 512
MAX_LINES = 400

_Direction = Literal["c", "s"]
# One recorded event: a line (direction, text, elapsed) or a reply (code, message, elapsed).
_Raw = tuple[_Direction, str, float] | tuple[int, str, float]


class Transcript:
    def __init__(self, redactor: Redactor, *, started: float | None = None) -> None:
        self.redact = redactor
        self.started = time.monotonic() if started is None else started
        self._raw: list[_Raw] = []
        self._pending = 0  # lines the raw record will give at most (bounds memory)
        self._lines: list[TranscriptLine] = []
        self._dropped = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _record(self, entry: _Raw, lines: int) -> None:
        if len(self._lines) + self._pending >= MAX_LINES:
            self._dropped += lines  # beyond the bound: counted, not kept
            return
        self._pending += lines
        self._raw.append(entry)

    def add(self, direction: Literal["c", "s"], line: str) -> None:
        self._record((direction, line, self.elapsed()), 1)

    def client(self, line: str) -> None:
        self.add("c", line)

    def client_masked(self, prefix: str) -> None:
        """A client line whose payload is a credential: record only the command."""
        self.add("c", f"{prefix} {MASK}".strip())

    def reply(self, code: int, message: str) -> None:
        """Record a (possibly multi-line) reply as the lines the server sent."""
        self._record((code, message, self.elapsed()), message.count("\n") + 1)

    def note(self, text: str) -> None:
        """A server-side event that is not a line (a closed connection, a timeout)."""
        self.add("s", f"[{text}]")

    def _build(self) -> None:
        """Redact what was recorded since the last build (in order, within the bounds)."""
        raw, self._raw, self._pending = self._raw, [], 0
        for first, text, at in raw:
            if isinstance(first, int):
                # Masked as a whole first: a secret split over two reply lines is one secret.
                parts = self.redact.mask(text).split("\n") if text else [""]
                for i, part in enumerate(parts):
                    sep = " " if i == len(parts) - 1 else "-"
                    self._append("s", f"{first}{sep}{part}".rstrip(), at)
            else:
                self._append(first, text, at)

    def _append(self, direction: _Direction, line: str, at: float) -> None:
        if len(self._lines) >= MAX_LINES:
            self._dropped += 1
            return
        text = cap(self.redact(line, one_line=True), MAX_LINE_CHARS, self.redact)
        self._lines.append(TranscriptLine(direction, text, at))

    def lines(self) -> tuple[TranscriptLine, ...]:
        self._build()
        out = list(self._lines)
        if self._dropped:
            out.append(TranscriptLine("s", f"[{self._dropped} more lines not recorded]",
                                      self.elapsed()))
        return tuple(out)

    def view(self) -> TranscriptView:
        """The lines as a sequence that is redacted when first read (see the module)."""
        return TranscriptView(self)


class TranscriptView(Sequence[TranscriptLine]):
    """The redacted lines of a :class:`Transcript`, built on first use, then fixed."""

    __slots__ = ("_lines", "_source")

    def __init__(self, source: Transcript) -> None:
        self._source: Transcript | None = source
        self._lines: tuple[TranscriptLine, ...] | None = None

    def _get(self) -> tuple[TranscriptLine, ...]:
        if self._lines is None:
            assert self._source is not None
            self._lines = self._source.lines()
            self._source = None  # the raw record and the redactor's secrets go with it
        return self._lines

    @overload
    def __getitem__(self, index: int) -> TranscriptLine: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[TranscriptLine, ...]: ...

    def __getitem__(self, index: int | slice) -> TranscriptLine | tuple[TranscriptLine, ...]:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[TranscriptLine]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self._get() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._get())

    def __repr__(self) -> str:
        return repr(self._get())

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (self._get(),))
