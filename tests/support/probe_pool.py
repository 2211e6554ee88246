"""What the probe-pool tests share: a relay's spec and the counting in-process fallback."""

from __future__ import annotations

from reconciler.probe import run_probe
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtpSpec
from tests.support.engine_env import USER


def relay_spec(port: int, user: str = USER) -> ExternalSmtpSpec:
    """STARTTLS + AUTH PLAIN against the loopback relay on ``port``."""
    return ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": port, "authentication": "UsernamePassword",
        "startTLS": True, "username": user, "passwordFrom": {"env": "SMTP_PW"},
        "connectionTest": {"timeoutSeconds": 10}})


class Fallback:
    """The in-process probe, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        self.calls += 1
        return await run_probe(spec, creds)
