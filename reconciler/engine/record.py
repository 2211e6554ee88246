"""The active record: ``status.active``, the connection that passed, as applications get it.

Built from the *verdict* (what the test actually did), not from the spec alone:

* ``port`` and ``tlsMode`` are the ones the passing connection used.  With
  ``socketFactory.fallback: true`` a relay whose implicit-TLS port refused can pass over
  the fallback connection to ``spec.port``; the record then says ``spec.port`` and the
  mode that connection really had (``starttls`` when it was upgraded, ``none`` when not),
  and ``fallbackUsed: true``.  It never hands out the port that refused.
* ``tls`` is the trust the test relied on: verification on or off, the server name the
  certificate was checked against, the minimum version, the CA bundle reference and the
  keyed version of the bundle that was trusted, the negotiated version and the
  certificate's expiry.
* ``credentialVersion`` is the keyed version (an HMAC, never the value) of the password
  that passed - or, for OAuth 2.0, the version of the provider's configuration the test's
  access token was obtained with (``o:`` + a hash of its spec and the keyed versions of
  its secrets; records written by an earlier smtpctl hold the provider's test-memo digest,
  ``sha256:...``) - so a consumer can refuse a value that is not the tested one
  (``smtpctl get active --reveal``, the operator's published Secret).
* ``verifiedAt`` is when this exact configuration last passed; ``health`` turns
  ``Failing`` (with ``failingSince`` and ``failure``) when a re-verification of exactly
  this configuration fails - the relay in use is down, as opposed to a newer generation
  that failed while this one is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from reconciler.engine.conditions import rfc3339
from reconciler.probe.verdict import Verdict
from reconciler.resources import ExternalSmtp
from reconciler.status import ActiveRecord, ActiveTls, SecretRefDict, TlsMode

_MODES: tuple[TlsMode, ...] = ("implicit", "starttls", "none")


def credential_version(res: ExternalSmtp, versions: Mapping[str, str]) -> str | None:
    """The version of the credential a test used (what ``--reveal`` must match)."""
    s = res.spec
    if s.authentication == "UsernamePassword":
        return versions.get("passwordFrom")
    if s.authentication == "OAuth2" and s.oauth2_provider_ref is not None:
        # The version of the provider's configuration (spec hash + keyed versions of its
        # client secret and refresh token) the test's access token was obtained with, as
        # the token manager reports it - not the provider's test memo: the operator writes
        # that after the provider's status, so a relay tested in between recorded no
        # version and its token was never published.
        return versions.get(f"oauth2:{s.oauth2_provider_ref.name}") or None
    return None


def passed_record(res: ExternalSmtp, generation: int, digest: str, verdict: Verdict,
                  versions: Mapping[str, str], now: float) -> ActiveRecord:
    """The record of a passed test of ``res`` (see the module docstring)."""
    s = res.spec
    d: Mapping[str, Any] = verdict.details
    fallback = bool(d.get("fallbackUsed"))
    port = s.port if fallback else s.connect_port
    used = d.get("tlsMode")
    mode: TlsMode = cast(TlsMode, used) if used in _MODES else s.tls_mode
    rec: ActiveRecord = {"generation": generation, "host": s.host, "port": port,
                         "tlsMode": mode, "authentication": s.authentication}
    if fallback:
        rec["fallbackUsed"] = True
    if s.username:
        rec["username"] = s.username
    if s.sender:
        rec["from"] = s.sender
    if s.password_from is not None:
        rec["passwordFrom"] = cast(SecretRefDict, s.password_from.wire())
    if s.oauth2_provider_ref is not None:
        rec["oauth2Provider"] = s.oauth2_provider_ref.name
    version = credential_version(res, versions)
    if version:
        rec["credentialVersion"] = version
    if mode != "none":
        tls: ActiveTls = {"verify": s.tls.verify, "serverName": s.tls.server_name or s.host,
                          "minVersion": s.tls.min_version}
        if s.tls.ca_bundle_from is not None:
            tls["caBundleFrom"] = cast(SecretRefDict, s.tls.ca_bundle_from.wire())
            ca_version = versions.get("tls.caBundleFrom")
            if ca_version:
                tls["caBundleVersion"] = ca_version
        if isinstance(d.get("tlsVersion"), str):
            tls["version"] = str(d["tlsVersion"])
        if isinstance(d.get("certificateNotAfter"), str):
            tls["certificateNotAfter"] = str(d["certificateNotAfter"])
        rec["tls"] = tls
    rec["digest"] = digest
    rec["verifiedAt"] = rfc3339(now)
    rec["health"] = "Healthy"
    return rec


def failing_record(rec: ActiveRecord, reason: str, message: str, now: float) -> ActiveRecord:
    """``rec`` after a re-verification of exactly its configuration failed."""
    out = cast(ActiveRecord, dict(rec))
    if out.get("health") != "Failing":
        out["failingSince"] = rfc3339(now)
    out["health"] = "Failing"
    out["failure"] = {"reason": reason, "message": message}
    return out


def is_failing(rec: Mapping[str, Any] | None) -> bool:
    return bool(rec) and (rec or {}).get("health") == "Failing"
