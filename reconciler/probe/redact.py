"""Redaction and sanitising of everything a server says before it reaches any output.

A relay or token endpoint may echo a credential back - a broken server repeating the AUTH
line in a 501, a proxy quoting the request, an OAuth ``error_description`` that quotes the
client secret - and it may do so in any encoding, or split it so that a naive search
misses it.  It may also send terminal escapes, bidi overrides or newlines that would
rewrite a terminal, forge log lines or break a status field.  So every server-provided
text goes through :class:`Redactor` (which knows the secret values we sent) and
:func:`sanitize`, in that order.

A secret is masked in each of these forms:

* as it is, **case-changed**, and **split** by whitespace, line breaks, control characters,
  terminal escape sequences or invisible (zero-width, bidi) characters between any two of
  its characters;
* **URL-encoded** (``quote``, ``quote_plus``, with and without the reserved characters
  left alone; ``%2f`` and ``%2F`` alike) and **hex** (either case), split the same ways;
* **base64** (standard or URL-safe alphabet) at any byte offset inside a larger blob, in
  a blob wrapped over lines, including secrets of one or two bytes and the
  ``Basic base64(id:secret)`` of HTTP: every run of base64 characters is decoded at each
  of the four alignments and masked whole when the bytes contain a secret.

Masking errs on the side of hiding: a very short secret may mask unrelated text.

:func:`sanitize` then turns control characters into visible escapes (``\\x1b``), removes
nothing silently, and (``one_line``) folds line breaks into spaces.  :func:`cap` bounds a
text after redaction (redact first: a cut in the middle of a secret must not leave a
prefix in clear; a tail that is the beginning of a secret is masked too).
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Iterable

from reconciler.secret import MASK, Secret

__all__ = ["MAX_MESSAGE", "Redactor", "cap", "sanitize", "scrub"]

MAX_MESSAGE = 4096  # a condition message: well under the CRD's 32,768

# Between two characters of a secret, any of these may have been inserted.
_SEP = re.compile(r"\s|\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]"
                  r"|[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff]")
_B64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]+=*")
_URL_SAFE = ("", "/", "/:@!$&'()*+,;=~")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e"
                      r"\u2060-\u2069\ufeff]")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")


def _skeleton(text: str) -> tuple[str, list[int]]:
    """``text`` without separators, lower-cased, and the original index of each character
    kept.  Searching the skeleton finds a secret however it was split or case-changed."""
    chars: list[str] = []
    index: list[int] = []
    pos = 0
    for m in _SEP.finditer(text):
        for i in range(pos, m.start()):
            low = text[i].lower()
            chars.append(low if len(low) == 1 else text[i])
            index.append(i)
        pos = m.end()
    for i in range(pos, len(text)):
        low = text[i].lower()
        chars.append(low if len(low) == 1 else text[i])
        index.append(i)
    return "".join(chars), index


def _forms(raw: bytes) -> set[str]:
    text = raw.decode("utf-8", "replace")
    forms = {text, raw.hex()}
    for safe in _URL_SAFE:
        forms.add(urllib.parse.quote(raw, safe=safe))
        forms.add(urllib.parse.quote_plus(raw, safe=safe))
    return {_skeleton(f)[0] for f in forms} - {""}


class Redactor:
    """Masks known secrets (in every form above) and sanitises; add every secret first."""

    def __init__(self) -> None:
        self._raw: set[bytes] = set()
        # The masking forms of every secret, built on the first mask: most connection
        # tests pass and their transcripts are never rendered (transcript.py), so they
        # never mask anything and need no forms.
        self._needle_cache: list[str] | None = []
        self._prefixes: tuple[str, ...] = ()

    def add(self, secret: Secret | str | bytes) -> None:
        """Register a secret value (or a whole payload that carries one)."""
        if isinstance(secret, Secret):
            raw = secret.reveal().encode()
        elif isinstance(secret, str):
            raw = secret.encode()
        else:
            raw = secret
        if not raw or raw in self._raw:
            return
        self._raw.add(raw)
        self._needle_cache = None
        self._prefixes = tuple(sorted({r.decode("utf-8", "replace") for r in self._raw},
                                      key=len, reverse=True))

    @property
    def _needles(self) -> list[str]:
        if self._needle_cache is None:
            self._needle_cache = sorted({f for r in self._raw for f in _forms(r)},
                                        key=len, reverse=True)
        return self._needle_cache

    def __bool__(self) -> bool:
        return bool(self._raw)

    def mask(self, text: str) -> str:
        """``text`` with every known secret masked (not sanitised)."""
        if not self._raw or not text:
            return text
        text = self._mask_plain(text)
        return self._mask_base64(text)

    def __call__(self, text: str, *, one_line: bool = False) -> str:
        """Masked, then sanitised (control characters made visible)."""
        return sanitize(self.mask(text), one_line=one_line)

    def secret_prefix_at_end(self, text: str) -> int:
        """How many trailing characters of ``text`` are the beginning (3+ characters) of a
        secret (0: none)."""
        low = text.lower()
        best = 0
        for secret in self._prefixes:
            s = secret.lower()
            for n in range(min(len(s), len(low)), 2, -1):
                if low.endswith(s[:n]):
                    best = max(best, n)
                    break
        return best

    def _mask_plain(self, text: str) -> str:
        skeleton, index = _skeleton(text)
        spans: list[tuple[int, int]] = []
        for needle in self._needles:
            start = skeleton.find(needle)
            while start >= 0:
                spans.append((index[start], index[start + len(needle) - 1] + 1))
                start = skeleton.find(needle, start + 1)
        return _replace(text, spans)

    def _mask_base64(self, text: str) -> str:
        tokens = list(_B64_TOKEN.finditer(text))
        alone = [self._decodes_to_secret(t.group(0)) for t in tokens]
        spans = [t.span() for t, hit in zip(tokens, alone, strict=True) if hit]

        def joined(i: int, j: int) -> bool:
            return self._decodes_to_secret("".join(t.group(0) for t in tokens[i:j + 1]))

        # Wrapped over lines or split by spaces: the smallest run of 2 to 4 neighbouring
        # tokens (only whitespace between them) that holds a secret no single one holds.
        for i in range(len(tokens)):
            for j in range(i + 1, min(i + 4, len(tokens))):
                if text[tokens[j - 1].end():tokens[j].start()].strip() or any(alone[i:j + 1]):
                    break
                if joined(i, j) and not joined(i + 1, j) and not joined(i, j - 1):
                    spans.append((tokens[i].start(), tokens[j].end()))
                    break
        return _replace(text, spans)

    def _decodes_to_secret(self, run: str) -> bool:
        return any(s in decoded for decoded in _decodings(run) for s in self._raw)


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each (merged) span replaced by the mask."""
    if not spans:
        return text
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    out: list[str] = []
    pos = 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _decodings(run: str) -> Iterable[bytes]:
    """``run`` decoded as base64 at each of the four character alignments, both alphabets."""
    if len(run) < 2:
        return
    std = run.replace("-", "+").replace("_", "/").rstrip("=")
    for offset in range(4):
        part = std[offset:]
        usable = len(part) - len(part) % 4
        tails = [part[:usable]]
        if len(part) % 4 in (2, 3):  # a final partial quartet: pad it
            tails.append(part + "=" * (4 - len(part) % 4))
        for chunk in tails:
            if not chunk:
                continue
            try:
                yield base64.b64decode(chunk, validate=True)
            except (binascii.Error, ValueError):
                continue


def sanitize(text: str, *, one_line: bool = False) -> str:
    """Control and invisible formatting characters as visible escapes (``\\x1b``,
    ``\\u202e``); with ``one_line`` every line break becomes a space and whitespace runs
    collapse (condition messages, one-line reports)."""
    if one_line:
        text = _LINE_BREAKS.sub(" ", text).replace("\t", " ")
        text = re.sub(r" {2,}", " ", text).strip()
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\\r")
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    c = match.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def cap(text: str, limit: int = MAX_MESSAGE, redactor: Redactor | None = None) -> str:
    """``text`` cut to ``limit`` characters with a marker; redact *before* capping (the
    cut must not leave a secret's beginning in clear: pass the redactor to mask a tail
    that starts one)."""
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more characters]"
    head = text[: max(0, limit - len(marker))]
    cut = redactor.secret_prefix_at_end(head) if redactor is not None else 0
    if cut:
        head = head[:-cut] + MASK
    return head + marker


def scrub(text: str, secrets: Iterable[Secret | str], *, limit: int = 300) -> str:
    """A server's words for one line of output: secrets masked, controls escaped, bounded."""
    redactor = Redactor()
    for s in secrets:
        redactor.add(s)
    return cap(redactor(text, one_line=True), limit, redactor)
