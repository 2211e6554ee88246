"""The SMTP probe: the connection test behind Ready (layer "smtp probe" in docs/architecture.md).

Public API (other layers import only these names)::

    from reconciler.probe import run_probe, EgressPolicy, Verdict, ProbeCredentials

    verdict = await run_probe(spec, ProbeCredentials(password=Secret("...")))

``run_probe`` never raises for anything a server or the network does; it returns a
:class:`Verdict` whose ``reason`` is a name from :mod:`reconciler.catalog`.  See
``docs/probe.md`` for the stages, the TLS modes and the redaction rules.

Importing this package pulls in aiosmtplib (and tenacity) lazily: ``run_probe`` is a
thin wrapper so that ``from reconciler.probe import Verdict`` stays cheap for layers that
only handle results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.probe.egress import DEFAULT_DENY, EgressPolicy
from reconciler.probe.verdict import ProbeCredentials, TokenProvider, TranscriptLine, Verdict

if TYPE_CHECKING:
    from reconciler.resources import ExternalSmtpSpec

__all__ = [
    "DEFAULT_DENY",
    "EgressPolicy",
    "ProbeCredentials",
    "TokenProvider",
    "TranscriptLine",
    "Verdict",
    "run_probe",
]


async def run_probe(
    spec: ExternalSmtpSpec,
    creds: ProbeCredentials,
    *,
    policy: EgressPolicy | None = None,
    send_test_message_to: str | None = None,
) -> Verdict:
    """Run the connection test of ``spec`` with resolved ``creds``; always a Verdict."""
    from reconciler.probe.runner import run_probe as _run_probe

    return await _run_probe(spec, creds, policy=policy,
                            send_test_message_to=send_test_message_to)
