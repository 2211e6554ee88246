"""TLS settings of a probe, and what a failed handshake means.

Certificates are verified against the system trust store plus ``spec.tls.caBundleFrom``
(resolved by the credentials layer into ``ProbeCredentials.ca_bundle_pem``), the host
name is checked against ``spec.tls.serverName`` (default ``spec.host``), and TLS 1.2 is
the floor (``spec.tls.minVersion`` can raise it to 1.3).  ``spec.tls.verify: false``
switches verification off; the runner reports it as a warning.
"""

from __future__ import annotations

import functools
import ssl
import time

from reconciler.resources import ExternalSmtpSpec

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(spec: ExternalSmtpSpec, ca_bundle_pem: str | None) -> ssl.SSLContext:
    """The client context for ``spec`` (shared between probes with the same settings).

    Loading the system trust store costs about 20 ms, a large part of a loopback test and
    several round trips' worth on a fast network, so contexts are cached by their inputs.
    They are never changed after creation, and OpenSSL contexts may be shared by any
    number of connections.
    """
    return _context(ca_bundle_pem or None, spec.tls.min_version, spec.tls.verify)


@functools.lru_cache(maxsize=64)
def _context(ca_bundle_pem: str | None, min_version: str, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_bundle_pem:
        ctx.load_verify_locations(cadata=ca_bundle_pem)
    ctx.minimum_version = _VERSIONS[min_version]
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_name(spec: ExternalSmtpSpec) -> str:
    return spec.tls.server_name or spec.host


# OpenSSL X509_V_ERR_* codes -> what we tell the user.
_CERT_PROBLEMS = {
    9: "not-yet-valid",
    10: "expired",
    18: "self-signed",
    19: "self-signed",  # self-signed certificate in the chain
    20: "unknown-ca",
    21: "unknown-ca",
    2: "unknown-ca",
    62: "wrong-host",
    64: "wrong-host",
}
_PROBLEM_TEXT = {
    "expired": "the certificate has expired",
    "not-yet-valid": "the certificate is not valid yet",
    "self-signed": "the certificate is self-signed and not trusted",
    "unknown-ca": "the certificate was issued by an unknown certificate authority",
    "wrong-host": "the certificate is not valid for the server name",
}


def certificate_problem(exc: ssl.SSLCertVerificationError) -> str:
    """A short stable word: expired | wrong-host | self-signed | unknown-ca | other."""
    code = getattr(exc, "verify_code", None)
    if isinstance(code, int) and code in _CERT_PROBLEMS:
        return _CERT_PROBLEMS[code]
    text = str(getattr(exc, "verify_message", "") or exc).lower()
    if "expired" in text:
        return "expired"
    if "hostname" in text or "ip address mismatch" in text:
        return "wrong-host"
    if "self-signed" in text or "self signed" in text:
        return "self-signed"
    if "issuer" in text:
        return "unknown-ca"
    return "other"


def describe_certificate_problem(problem: str, exc: ssl.SSLCertVerificationError,
                                 name: str) -> str:
    text = _PROBLEM_TEXT.get(problem, "the certificate could not be verified")
    if problem == "wrong-host":
        text += f" {name!r}"
    verify = getattr(exc, "verify_message", None)
    return f"{text} ({verify})" if verify else text


def certificate_not_after(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The peer certificate's expiry as RFC 3339 UTC (``status.active.tls``), or None.

    Keyed by the certificate's DER form (a relay presents the same certificate to every
    test: parsed once per certificate, :func:`_not_after`).  A verified connection's
    ``getpeercert()`` carries ``notAfter`` (the standard library's own parse); with
    verification off that is an empty dict, and the DER form is parsed with
    ``cryptography`` - imported only then, never by hand.  So a fleet of verified relays
    never imports ``cryptography`` (~25-40 ms of an operator's way to its first Ready).
    """
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return None
    if not der:
        return None
    return _not_after(der, ssl_object)


_NOT_AFTER_CACHE = 256  # certificates remembered (DER, ~1-2 KB each)
_not_after_seen: dict[bytes, str | None] = {}


def _not_after(der: bytes, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    if der in _not_after_seen:
        return _not_after_seen[der]
    value = _parse_not_after(der, ssl_object)
    if len(_not_after_seen) >= _NOT_AFTER_CACHE:
        _not_after_seen.clear()  # bounded; a relay's certificate is parsed again, once
    _not_after_seen[der] = value
    return value


def _parse_not_after(der: bytes, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    try:
        peer = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):
        peer = None
    text = peer.get("notAfter") if peer else None
    if isinstance(text, str):
        try:
            when = ssl.cert_time_to_seconds(text)
        except ValueError:
            pass
        else:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
