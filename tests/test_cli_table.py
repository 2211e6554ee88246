"""Tables on a terminal (localcmd.print_table): laid out by smtpctl, not cell by cell by rich.

rich's Table took ~1 ms per row: the report of a first apply of 1,000 relays on a
terminal spent a second of CPU (and of wall time) on it.  The layout is the one rich
printed when the table fits; a table wider than the terminal keeps every column (the
widest ones other than NAME and READY are cut, with an ellipsis) where rich dropped the
last columns.
"""

from __future__ import annotations

import io
import re

import pytest

from reconciler.cli import localcmd
from reconciler.cli.localcmd import HEADER, print_table

H = [*HEADER, "CHANGE", "TEST"]
ROWS = [
    ["default/relay-00001", "ExternalSmtp", "127.0.0.1:2525", "UsernamePassword", "True",
     "yes", "TestPassed", "create", "passed"],
    ["default/r2", "ExternalSmtp", "smtp.example.test:587", "None", "False", "-",
     "AuthenticationFailed", "update", "failed"],
    ["default/r3", "ExternalSmtp", "h:25", "OAuth2", "Unknown", "-", "Pending", "create", "-"],
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _print(rows: list[list[str]]) -> str:
    out = Tty()
    print_table(H, rows, out)
    return out.getvalue()


def _rich(rows: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> str:
    with monkeypatch.context() as m:
        m.setattr(localcmd, "_plain", lambda *_: False)  # the rich layout, as before
        return _print(rows)


def test_a_table_that_fits_is_laid_out_as_rich_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    ours, theirs = _print(ROWS), _rich(ROWS, monkeypatch)
    assert ANSI.sub("", ours) == ANSI.sub("", theirs)
    # the rows byte for byte, READY's colours included; the header is bold in both
    assert ours.splitlines()[1:] == theirs.splitlines()[1:]
    assert "\x1b[32mTrue\x1b[0m" in ours and "\x1b[31mFalse\x1b[0m" in ours
    assert "\x1b[33mUnknown\x1b[0m" in ours and ours.startswith("\x1b[1mNAME")


def test_a_large_table_is_not_rendered_by_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    import rich.table

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("rich.table.Table used for a plain table")

    monkeypatch.setattr(rich.table, "Table", refuse)  # fails before: rich laid it out
    monkeypatch.setenv("COLUMNS", "200")
    rows = [[f"default/relay-{i:05d}", *ROWS[0][1:]] for i in range(1000)]
    lines = ANSI.sub("", _print(rows)).splitlines()
    assert len(lines) == 1001 and lines[1000].startswith("default/relay-00999  ")


def test_a_table_wider_than_the_terminal_keeps_every_column(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    lines = ANSI.sub("", _print(ROWS)).splitlines()
    assert all(len(line) <= 60 for line in lines), lines
    head = lines[0].split()
    assert len(head) == len(H)  # fails before: rich dropped REASON, CHANGE and TEST
    assert head[0] == "NAME" and head[4] == "READY"  # never cut
    assert lines[1].startswith("default/relay-00001  ")  # NAME is never cut
    assert "Unknown" in lines[3]  # READY is never cut
    assert "\u2026" in lines[1]  # a cut cell says so


def test_no_color_and_a_dumb_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    text = _print(ROWS)
    assert "\x1b[3" not in text and text.startswith("\x1b[1mNAME")
    monkeypatch.setenv("TERM", "dumb")
    assert "\x1b[" not in _print(ROWS)


def test_cells_that_are_not_printable_ascii_are_left_to_rich(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rows = [["default/r\u00e9lais", *ROWS[0][1:]], ["default/x\x1b[31m", *ROWS[0][1:]]]
    assert not localcmd._plain(H, rows)
    text = _print(rows)
    assert "default/r\u00e9lais" in text
