"""``check_ca_bundle`` loads the bundle it checks, not the system's CA store.

It used ``ssl.create_default_context()``, which first loads every certificate of the
system store (SSL_CERT_FILE: 144 here; ~30 ms) - once per apply, in its first pass, on the
way to its first connection test (docs/benchmarks/fleet.md, Round 7).  The check and its
words are the same with a bare client context: both load the bundle with one OpenSSL call.
"""

from __future__ import annotations

import ssl

import pytest
import trustme

from reconciler.credentials import resolve
from reconciler.credentials.base import CredentialError

BAD = [
    "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "just some text, no PEM block\n",
    "",
]


def _old_words(pem: str) -> str | None:
    """What the check said with create_default_context (the code before this change)."""
    import re

    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        said = str(exc.args[-1]) if exc.args else type(exc).__name__
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", said)[:200]
    return None


def test_the_check_does_not_load_the_system_store(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[object] = []
    real = ssl.SSLContext.load_default_certs

    def spy(self: ssl.SSLContext, *a: object, **kw: object) -> None:
        loaded.append(self)
        real(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", spy)
    resolve._ca_problem.cache_clear()
    resolve.check_ca_bundle(trustme.CA().cert_pem.bytes().decode(), "file /x/ca.pem")
    with pytest.raises(CredentialError):
        resolve.check_ca_bundle(BAD[0], "file /x/ca.pem")
    assert loaded == []


@pytest.mark.parametrize("pem", BAD)
def test_a_bad_bundle_is_described_in_the_same_words(pem: str) -> None:
    resolve._ca_problem.cache_clear()
    assert _old_words(pem) is not None
    assert resolve._ca_problem(pem) == _old_words(pem)


def test_a_good_bundle_passes_as_before() -> None:
    good = trustme.CA().cert_pem.bytes().decode()
    resolve._ca_problem.cache_clear()
    assert _old_words(good) is None and resolve._ca_problem(good) is None
