"""Canary secrets: planted in every secret source and token; no output may contain them.

Every test that resolves a secret uses these values (or ``canary(name)``), and the
``leak_guard`` fixture (tests/conftest.py) greps captured stdout/stderr and log records
for them at teardown.  Tests also call ``assert_no_canary`` on transcripts, status,
store files and exception texts they produce.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

_PREFIX = "CANARY"
PASSWORD = "CANARY-pw-7f3a9c-" + "x" * 4
CLIENT_SECRET = "CANARY-cs-51bd02"
REFRESH_TOKEN = "CANARY-rt-c0ffee"
ACCESS_TOKEN_PREFIX = "CANARY-at-"

_planted: set[str] = {PASSWORD, CLIENT_SECRET, REFRESH_TOKEN}


def canary(name: str) -> str:
    """A fresh canary value, registered so ``assert_no_canary`` looks for it too."""
    value = f"{_PREFIX}-{name}-{os.urandom(4).hex()}"
    _planted.add(value)
    return value


def canary_special(name: str) -> str:
    """A canary whose URL-encoded forms differ from it (``+``, ``/``, ``=``, ``&``, ``%``,
    a space): for sweeps that must also find a secret URL-encoded (a form body, the
    ``client_secret_basic`` header) or base64 of its URL-encoded form."""
    value = f"{_PREFIX}-{name}-{os.urandom(4).hex()}+/ =&%"
    _planted.add(value)
    return value


def _texts(value: str) -> Iterable[str]:
    """The value and its URL-encoded forms (``%20``/``+`` for a space, as a form body or
    RFC 6749's client_secret_basic encodes it)."""
    yield value
    for form in (quote(value, safe=""), quote_plus(value, safe="")):
        if form != value:
            yield form


def _forms(value: str) -> Iterable[str]:
    """Each text form of the value and its base64 form at each of the three alignments.

    Inside a base64 payload (AUTH PLAIN ``\0user\0password``, XOAUTH2, HTTP Basic) the
    secret starts at an arbitrary byte offset; for offset ``k`` (mod 3) its encoding is the
    slice of ``b64(k filler bytes + value)`` that depends only on the value's bytes.
    """
    for text in dict.fromkeys(_texts(value)):
        yield text
        raw = text.encode()
        for k in range(3):
            enc = base64.b64encode(b"\0" * k + raw).decode()
            start = -(-k * 4 // 3)  # ceil(4k/3): first char not touched by the filler
            stop = ((k + len(raw)) // 3) * 4  # last full group made only of value bytes
            if stop - start >= 8:
                yield enc[start:stop]
                safe = enc[start:stop].replace("+", "-").replace("/", "_")
                if safe != enc[start:stop]:
                    yield safe  # URL-safe base64


def planted() -> set[str]:
    return set(_planted)


def find_canary(text: str | bytes) -> str | None:
    """The first planted canary (or a base64 form of one) found in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if ACCESS_TOKEN_PREFIX in text:
        return ACCESS_TOKEN_PREFIX
    for value in list(_planted):  # a server thread may plant a canary meanwhile
        for form in _forms(value):
            if form and form in text:
                return value
    return None


def assert_no_canary(*texts: str | bytes, where: str = "output") -> None:
    for text in texts:
        hit = find_canary(text)
        assert hit is None, f"secret canary leaked into {where}"


def assert_no_canary_in_tree(root: Path) -> None:
    """Grep every file under ``root`` (state directories, logs) for canaries."""
    for path in root.rglob("*"):
        if path.is_file():
            assert_no_canary(path.read_bytes(), where=str(path))
