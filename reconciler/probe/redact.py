"""Redaction of credentials from anything the probe records or reports.

Why by value and not only by command name: a server may echo a credential back (a
broken server repeating the AUTH line in a 501, a proxy quoting the request), and an
AUTH payload is base64, so the same secret can appear in several encodings and at any
byte offset inside a larger base64 blob.  The redactor therefore knows the secret values
themselves and masks, in every line both ways:

* each secret value verbatim;
* any whitespace-separated word that contains the secret's base64 encoding at any of the
  three byte alignments (``"\\0user\\0" + password`` in AUTH PLAIN puts the password at an
  arbitrary offset of the base64 text), or the whole base64 of a payload we sent.

Fragments shorter than :data:`_MIN_FRAGMENT` characters are not used, so that a short
secret cannot turn unrelated words into masks (a short secret is still masked verbatim).
"""

from __future__ import annotations

import base64
import re

from reconciler.secret import MASK, Secret

_MIN_FRAGMENT = 6
_WORD = re.compile(r"\S+")


def _b64_fragments(raw: bytes) -> set[str]:
    """Base64 text that appears whenever ``raw`` is encoded inside a larger blob."""
    out: set[str] = set()
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw).decode()
        start = 4 if shift else 0  # the first quartet mixes prefix bytes with the secret
        middle = enc[start:-4] if len(enc) - start > 4 else ""
        if len(middle) >= _MIN_FRAGMENT:
            out.add(middle)
    full = base64.b64encode(raw).decode()
    if len(full) >= _MIN_FRAGMENT:
        out.add(full)
    return out


class Redactor:
    """Masks known secrets in text.  Add every secret before the first line is recorded."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._fragments: set[str] = set()

    def add(self, secret: Secret | str | bytes) -> None:
        """Register a secret value (or a whole payload that carries one)."""
        if isinstance(secret, Secret):
            raw = secret.reveal().encode()
        elif isinstance(secret, str):
            raw = secret.encode()
        else:
            raw = secret
        if not raw:
            return
        self._values.add(raw.decode("utf-8", "replace"))
        self._fragments |= _b64_fragments(raw)

    def __call__(self, text: str) -> str:
        if not self._values:
            return text
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        if self._fragments:
            text = _WORD.sub(self._mask_word, text)
        return text

    def _mask_word(self, match: re.Match[str]) -> str:
        word = match.group(0)
        if word == MASK:
            return word
        return MASK if any(f in word for f in self._fragments) else word
