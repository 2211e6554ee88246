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
secret cannot turn unrelated words into masks.  A secret of 8 bytes or more is found at
every alignment; a shorter one is still masked verbatim and inside the exact payloads the
probe sent (those are registered whole).
"""

from __future__ import annotations

import base64
import re

from reconciler.secret import MASK, Secret

_MIN_FRAGMENT = 8  # two quartets: every alignment of a secret of 8+ bytes is covered
_WORD = re.compile(r"\S+")


def _b64_fragments(raw: bytes) -> set[str]:
    """Base64 text that appears whenever ``raw`` is encoded inside a larger blob.

    With ``k`` bytes before the secret (k = 0, 1, 2 modulo 3), the base64 quartets that
    encode only secret bytes are the same whatever surrounds it: quartets ``g0..g1`` with
    ``g0 = ceil(k / 3)`` and ``g1 = floor((k + len - 3) / 3)``.
    """
    out: set[str] = set()
    n = len(raw)
    for shift in range(3):
        first, last = -(-shift // 3), (shift + n - 3) // 3
        if last < first:
            continue
        enc = base64.b64encode(b"\0" * shift + raw).decode()
        middle = enc[4 * first:4 * (last + 1)]
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
