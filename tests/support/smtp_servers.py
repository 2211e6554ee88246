"""pytest fixtures and helpers around the devservers SMTP relay.

``relay`` starts :class:`reconciler.devservers.smtp.RelayServer` instances on loopback
(one call per server, all stopped at teardown); ``make_spec`` builds a validated
``ExternalSmtpSpec`` pointing at one; ``password_creds`` / ``TokenSource`` give the probe
canary credentials.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import ProbeCredentials
from reconciler.resources import IMPLICIT_TLS_CLASS, ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support import canary

USER = "app@example.test"
OTHER = "someone@example.test"


# Fixtures are named with ``name=`` so test modules can import them without the import
# being shadowed by the test's parameter (ruff F811).
@pytest.fixture(scope="session", name="shared_ca")
def shared_ca_fixture() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(name="relay")
def relay_fixture(shared_ca: trustme.CA) -> Iterator[Callable[..., RelayServer]]:
    started: list[RelayServer] = []

    def start(**kwargs: Any) -> RelayServer:
        kwargs.setdefault("users", {USER: canary.PASSWORD})
        kwargs.setdefault("ca", shared_ca)
        server = RelayServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def make_spec(port: int, *, mode: str = "starttls", auth: str = "UsernamePassword",
              implicit_port: int | None = None, fallback: bool = False,
              timeout: float = 5, host: str = "127.0.0.1", **extra: Any) -> ExternalSmtpSpec:
    """A spec for a loopback server.  ``mode``: starttls | implicit | plain."""
    data: dict[str, Any] = {
        "host": host, "port": port, "authentication": auth,
        "startTLS": mode == "starttls",
        "connectionTest": {"timeoutSeconds": timeout},
    }
    if auth != "None":
        data["username"] = USER
    if auth == "UsernamePassword":
        data["passwordFrom"] = {"env": "SMTP_PASSWORD"}
    if auth == "OAuth2":
        data["oauth2ProviderRef"] = {"name": "provider"}
    if mode == "implicit":
        data["socketFactory"] = {"class": IMPLICIT_TLS_CLASS,
                                 "port": implicit_port or port, "fallback": fallback}
    connection_test = extra.pop("connectionTest", None)
    if connection_test:
        data["connectionTest"].update(connection_test)
    data.update(extra)
    return ExternalSmtpSpec.model_validate(data)


def password_creds(server: RelayServer | None = None, *, password: str = canary.PASSWORD,
                   ca_pem: str | None = None) -> ProbeCredentials:
    pem = ca_pem if ca_pem is not None else (server.ca_pem if server is not None else None)
    return ProbeCredentials(password=Secret(password), ca_bundle_pem=pem)


def new_token() -> str:
    return canary.ACCESS_TOKEN_PREFIX + os.urandom(6).hex()


class TokenSource:
    """A token provider for the probe that records how it was called.

    ``tokens`` are handed out in order (the last one repeats); a forced refresh moves to
    the next one, as a real token cache would after the server rejected a token.
    """

    def __init__(self, *tokens: str, error: Exception | None = None) -> None:
        self.tokens = list(tokens) or [new_token()]
        self.calls: list[bool] = []
        self.error = error
        self._index = 0

    async def __call__(self, force_refresh: bool) -> Secret:
        self.calls.append(force_refresh)
        if self.error is not None:
            raise self.error
        if force_refresh and self._index < len(self.tokens) - 1:
            self._index += 1
        return Secret(self.tokens[self._index])

    def creds(self, server: RelayServer) -> ProbeCredentials:
        return ProbeCredentials(token_provider=self, ca_bundle_pem=server.ca_pem)
