"""The peer certificate's expiry (``status.active.tls.certificateNotAfter``) without
``cryptography`` on a verified connection, parsed once per certificate (issue 15: the
operator imported ``cryptography`` at its first connection test, ~25-40 ms on its way to
the first Ready, and parsed the DER form at every test)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import trustme

from reconciler.probe import tlsconfig

ROOT = Path(__file__).resolve().parents[1]
NOT_AFTER = datetime(2031, 7, 9, 14, 3, 27, tzinfo=UTC)
EXPECTED = "2031-07-09T14:03:27Z"


@contextmanager
def _tls_pair(ca: trustme.CA, leaf: trustme.LeafCert, *, verify: bool) -> Iterator[ssl.SSLSocket]:
    """A client TLS socket connected (over a socket pair) to a server presenting ``leaf``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    if verify:
        ca.configure_trust(client_ctx)
    else:
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    done = threading.Event()

    def serve() -> None:
        with server_ctx.wrap_socket(b, server_side=True) as s:
            done.wait(10)
            s.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(a, server_hostname="relay.test") as c:
            yield c
    finally:
        done.set()
        t.join(10)


def test_verified_and_unverified_connections_give_the_same_expiry() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("relay.test", not_after=NOT_AFTER)
    tlsconfig._not_after_seen.clear()
    with _tls_pair(ca, leaf, verify=True) as c:
        assert c.getpeercert()  # verified: the standard library's parse is there
        verified = tlsconfig.certificate_not_after(c)
    tlsconfig._not_after_seen.clear()
    with _tls_pair(ca, leaf, verify=False) as c:
        assert c.getpeercert() == {}  # verification off: only the DER form
        unverified = tlsconfig.certificate_not_after(c)
    assert verified == unverified == EXPECTED


class FakeSSL:
    """An SSL object's two views of one certificate, with the parsed view counted."""

    def __init__(self, der: bytes, not_after: str) -> None:
        self.der, self.not_after, self.parsed = der, not_after, 0

    def getpeercert(self, binary_form: bool = False) -> object:
        if binary_form:
            return self.der
        self.parsed += 1
        return {"notAfter": self.not_after}


def test_a_certificate_is_parsed_once_and_a_new_one_again() -> None:
    """Before, every test parsed the DER form (and a DER form cryptography cannot read
    gave None, whatever ``getpeercert()`` said)."""
    tlsconfig._not_after_seen.clear()
    one = FakeSSL(b"certificate one", "Jul  9 14:03:27 2031 GMT")
    assert [tlsconfig.certificate_not_after(one) for _ in range(5)] == [EXPECTED] * 5  # type: ignore[arg-type]
    assert one.parsed == 1
    other = FakeSSL(b"certificate two", "Jan  1 00:00:00 2030 GMT")
    assert tlsconfig.certificate_not_after(other) == "2030-01-01T00:00:00Z"  # type: ignore[arg-type]
    assert other.parsed == 1
    assert len(tlsconfig._not_after_seen) == 2


def test_the_cache_is_bounded() -> None:
    tlsconfig._not_after_seen.clear()
    for i in range(tlsconfig._NOT_AFTER_CACHE * 3):
        fake = FakeSSL(b"certificate %d" % i, "Jan  1 00:00:00 2030 GMT")
        assert tlsconfig.certificate_not_after(fake) == "2030-01-01T00:00:00Z"  # type: ignore[arg-type]
        assert len(tlsconfig._not_after_seen) <= tlsconfig._NOT_AFTER_CACHE


CODE = """
import socket, ssl, sys, threading
from reconciler.probe.tlsconfig import certificate_not_after
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(sys.argv[1], sys.argv[2])
client_ctx = ssl.create_default_context(cafile=sys.argv[3])
a, b = socket.socketpair()
a.settimeout(10); b.settimeout(10)
def serve():
    with server_ctx.wrap_socket(b, server_side=True) as s:
        s.recv(1)
t = threading.Thread(target=serve); t.start()
with client_ctx.wrap_socket(a, server_hostname="relay.test") as c:
    print(certificate_not_after(c))
    c.sendall(b"x")
t.join(10)
print("cryptography imported:", "cryptography" in sys.modules)
"""


def test_a_verified_connection_never_imports_cryptography(tmp_path: Path) -> None:
    """A fresh interpreter (no other test's imports): before, the first expiry parse
    imported ``cryptography`` (this test failed: ``cryptography imported: True``)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("relay.test", not_after=NOT_AFTER)
    chain, key, cafile = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    cafile.write_bytes(ca.cert_pem.bytes())
    out = subprocess.run([sys.executable, "-c", CODE, str(chain), str(key), str(cafile)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == [EXPECTED, "cryptography imported: False"], out
