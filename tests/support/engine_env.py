"""End-to-end fixtures for the engine/CLI tests: a real relay, a real token endpoint,
manifests on disk, and a helper that runs ``smtpctl`` in-process and captures its output.

Every secret is a canary (tests/support/canary.py); access tokens carry the canary
prefix, so the autouse leak guard and ``assert_no_canary_in_tree`` catch any leak.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary

USER = "app@example.test"
OAUTH_USER = "oauth@example.test"


@dataclass
class Env:
    root: Path
    relay: RelayServer
    oauth: OAuthServer
    state: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def smtp(self, name: str, *, selected: bool = False, user: str = USER,
             env: str = "SMTP_PW", port: int | None = None, namespace: str = "default",
             **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "host": "127.0.0.1", "port": port or self.relay.port,
            "authentication": "UsernamePassword", "startTLS": True, "username": user,
            "passwordFrom": {"env": env}, "selected": selected,
            "tls": {"caBundleFrom": {"file": str(self.ca_file)}},
            "connectionTest": {"timeoutSeconds": 5},
        }
        spec.update(extra)
        return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}

    def oauth_smtp(self, name: str, provider: str = "idp", *, selected: bool = False
                   ) -> dict[str, Any]:
        return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                "metadata": {"name": name},
                "spec": {"host": "127.0.0.1", "port": self.relay.port,
                         "authentication": "OAuth2", "startTLS": True,
                         "username": OAUTH_USER, "oauth2ProviderRef": {"name": provider},
                         "selected": selected,
                         "tls": {"caBundleFrom": {"file": str(self.ca_file)}},
                         "connectionTest": {"timeoutSeconds": 5}}}

    def provider(self, name: str = "idp", *, secret_env: str = "IDP_SECRET") -> dict[str, Any]:
        return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
                "metadata": {"name": name},
                "spec": {"grantType": "ClientCredentials", "clientId": "smtpctl",
                         "clientSecretFrom": {"env": secret_env},
                         "tokenEndpoint": self.oauth.token_url}}

    def write(self, name: str, *docs: dict[str, Any]) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        return path

    def cli(self, *args: str, state: bool = True) -> tuple[int, str]:
        argv = [*args, *(["--state", str(self.state)] if state else [])]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(argv)
        out = buf.getvalue()
        self.outputs.append(out)
        canary.assert_no_canary(out, where=f"output of smtpctl {' '.join(args)}")
        return code, out

    def status(self, name: str, kind: str = "ExternalSmtp", namespace: str = "default"
               ) -> dict[str, Any]:
        from reconciler.stores.base import ObjectRef
        from reconciler.stores.local import LocalStore

        with LocalStore(self.state, create=False) as store:
            obj = store.get_sync(ObjectRef(kind, namespace, name))
        assert obj is not None, name
        return {"generation": obj.generation, **obj.status}


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


@pytest.fixture(name="e2e")
def e2e_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("SMTP_PW", canary.PASSWORD)
    monkeypatch.setenv("IDP_SECRET", canary.CLIENT_SECRET)
    # These tests are about apply; the CLI's trust model (no env: reference unless
    # allowed, files only below the manifest's directory) has its own tests
    # (tests/test_security_*.py).
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "*")
    monkeypatch.setenv("SMTPCTL_ALLOW_FILE_ROOT", str(tmp_path))
    monkeypatch.delenv("SMTPCTL_STATE", raising=False)
    monkeypatch.delenv("SMTPCTL_VERSION_KEY", raising=False)
    oauth = OAuthServer(
        clients=[ClientConfig("smtpctl", canary.CLIENT_SECRET, grants=("client_credentials",),
                              subject=OAUTH_USER)],
        token_factory=lambda prefix: canary.ACCESS_TOKEN_PREFIX + os.urandom(6).hex())
    relay = RelayServer(mode="starttls", users={USER: canary.PASSWORD})

    def token_ok(user: str, token: str) -> bool:
        info = oauth.token_info(token)
        return info is not None and info.subject.lower() == user.lower()

    relay.token_validator = token_ok
    with oauth, relay:
        env = Env(tmp_path, relay, oauth, tmp_path / "state")
        env.ca_file.write_text(relay.ca_pem)
        yield env
        canary.assert_no_canary_in_tree(env.state)
