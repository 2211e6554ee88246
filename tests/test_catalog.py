"""The error catalog: well-formed entries, the generated docs/errors.md, probe coverage."""

from __future__ import annotations

import re
from pathlib import Path

from reconciler import catalog

ROOT = Path(__file__).resolve().parent.parent

# Every reason the probe can put into a verdict; each one is produced by a real-server
# test in tests/test_probe_*.py (see docs/probe.md for the mapping).
PROBE_REASONS = {
    "UnknownHost", "EgressDenied", "ConnectionRefused", "NetworkUnreachable",
    "ConnectTimeout", "ReadTimeout", "ImplicitTLSToPlainPort",
    "DeadlineExceeded", "TLSHandshakeFailed", "CertificateInvalid", "StartTLSUnavailable",
    "StartTLSRequired", "ServerUnavailable", "ProtocolError", "AuthenticationFailed",
    "OAuth2AuthenticationFailed", "AuthenticationRequired", "AuthNotSupported",
    "PlaintextAuthRefused", "ApplicationPasswordRequired", "SmtpAuthDisabled",
    "SenderRejected", "SendAsDenied", "RelayDenied", "TestPassed",
    "InsecureFallbackUsed", "TLSVerificationDisabled", "PlaintextAuthUsed",
    "PipelinedAuthRefused",
}


def test_docs_errors_md_is_generated_from_the_catalog() -> None:
    committed = (ROOT / "docs" / "errors.md").read_text()
    assert committed == catalog.render_markdown(), (
        "docs/errors.md drifted: run `python -m reconciler.catalog > docs/errors.md`")


def test_entries_are_well_formed() -> None:
    names = [r.name for r in catalog._ENTRIES]
    assert len(names) == len(set(names)), "duplicate reason names"
    for r in catalog._ENTRIES:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r.name), r.name
        assert r.message and r.action, r.name
        assert "|" not in r.message + r.action, f"{r.name} would break the Markdown table"
        assert not (r.retryable and r.stalled), f"{r.name} cannot be both"
        assert r.kind in ("error", "warning", "info")


def test_probe_reasons_exist_with_the_right_kind() -> None:
    for name in PROBE_REASONS:
        entry = catalog.get(name)
        if name in {"InsecureFallbackUsed", "TLSVerificationDisabled", "PlaintextAuthUsed",
                    "PipelinedAuthRefused"}:
            assert entry.kind == "warning"
        elif name != "TestPassed":
            assert entry.kind == "error", name


def test_original_messages_are_kept() -> None:
    originals = {
        "UnknownHost": "Unknown SMTP host",
        "ConnectionRefused": "Could not connect to SMTP host",
        "ConnectTimeout": "Connect timed out",
        "ReadTimeout": "Read timed out",
        "AuthenticationFailed": "Authentication failed: Bad username / password",
        "AuthenticationRequired": "Authentication required",
        "StartTLSUnavailable": "Could not convert socket to TLS",
    }
    for name, text in originals.items():
        assert catalog.get(name).message == text
        assert catalog.get(name).original == text
