"""Canary sweep: a secret planted through every credential source appears in no output.

Every source is exercised at once - a password from a file, from an environment variable
and from a Kubernetes Secret, an OAuth 2.0 client secret, refresh token (rotated by the
endpoint, so the new one is a canary too) and the access tokens the endpoint issues - and
the canaries carry characters that URL-encoding changes, so the sweep also finds them
URL-encoded (a form body, ``client_secret_basic``) and base64-encoded at any offset (AUTH
PLAIN, SASL XOAUTH2, HTTP Basic).  Then every output is searched:

* the CLI: ``test -v`` (text and ``-o json``), ``apply``, ``plan``, ``get -o yaml``,
  ``get active -o env``/``-o javamail`` (without ``--reveal``), ``describe``,
  ``reconcile``, ``oauth token``, every log record at DEBUG, and the state directory
  (``state.db`` with its free pages, the WAL kept alive by a second reader, the SHM);
* the operator (``-v``, debug logs): its log, every status, Event and Secret of the
  namespace except the user's own Secrets and the published Secret's one intended key.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.oauth import ClientConfig, OAuthServer
from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.kube_emulator import EmulatorThread
from tests.support.kube_operator import (
    GROUP,
    VERSION,
    OperatorProcess,
    cluster,
    condition,
    wait_for,
)

API = f"{GROUP}/{VERSION}"
NS = "mail"


def test_the_sweep_finds_every_encoding() -> None:
    """The search itself: a sweep that cannot see an encoding proves nothing about it."""
    secret = canary.canary_special("enc")
    token = canary.canary("tok")
    forms = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(f"\0user@example.test\0{secret}".encode()).decode(),  # AUTH PLAIN
        base64.b64encode(f"user=u@x.test\x01auth=Bearer {token}\x01\x01".encode()).decode(),
        "Basic " + base64.b64encode(f"client:{quote_plus(secret)}".encode()).decode(),
        base64.urlsafe_b64encode(f"xy{secret}".encode()).decode(),
        f"client_secret={quote_plus(secret)}&grant_type=refresh_token",
    ]
    for text in forms:
        assert canary.find_canary(f"noise {text} noise") is not None, text
    assert canary.find_canary("AUTH XOAUTH2 ******  235 2.7.0 Accepted") is None


# --- the CLI -------------------------------------------------------------------------------


class Planted:
    def __init__(self) -> None:
        self.file_pw = canary.canary_special("file-pw")
        self.env_pw = canary.canary_special("env-pw")
        self.k8s_pw = canary.canary_special("k8s-pw")
        self.client_secret = canary.canary_special("client-secret")
        self.refresh_token = canary.canary_special("refresh-token")


def relay(name: str, port: int, ca: Path, user: str, *, selected: bool = False,
          **auth: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"host": "127.0.0.1", "port": port, "startTLS": True, "username": user,
                     "tls": {"caBundleFrom": {"file": str(ca)}, "serverName": "localhost"},
                     "connectionTest": {"timeoutSeconds": 10, "checkRelay": False},
                     "selected": selected, **auth}}


def password(ref: dict[str, Any]) -> dict[str, Any]:
    return {"authentication": "UsernamePassword", "passwordFrom": ref}


def private(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def servers(p: Planted) -> Iterator[tuple[RelayServer, OAuthServer]]:
    idp = OAuthServer(clients=[ClientConfig("sweep", p.client_secret, subject="oauth@x.test")],
                      rotate_refresh_tokens=True,
                      token_factory=lambda prefix: canary.canary_special(prefix.strip("-")))
    idp.add_refresh_token(p.refresh_token, "sweep", subject="oauth@x.test")
    smtp = RelayServer(mode="starttls", users={
        "file@x.test": p.file_pw, "env@x.test": p.env_pw, "k8s@x.test": p.k8s_pw})

    def token_ok(user: str, token: str) -> bool:
        info = idp.token_info(token)
        return info is not None and info.subject.lower() == user.lower()

    smtp.token_validator = token_ok
    with idp, smtp:
        yield smtp, idp


def smtpctl(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


def test_cli_outputs_and_state_hold_no_canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    p = Planted()
    repo, state = tmp_path / "repo", tmp_path / "state"
    repo.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWEEP_PASSWORD", p.env_pw)
    monkeypatch.setenv("SWEEP_CLIENT_SECRET", p.client_secret)
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "SWEEP_*")
    monkeypatch.delenv("SMTPCTL_ALLOW_NAMESPACE", raising=False)
    monkeypatch.delenv("SMTPCTL_ALLOW_FILE_ROOT", raising=False)
    with (EmulatorThread(workdir=tmp_path / "emulator", namespaces=(NS,)) as kube,
          servers(p) as (smtp, idp)):
        kube.apply_objects([{"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "smtp", "namespace": NS},
                             "data": {"password": base64.b64encode(p.k8s_pw.encode()).decode()}}])
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig",
                                                                    namespace=NS)))
        ca = repo / "ca.pem"
        ca.write_text(smtp.ca_pem)
        pw, rt = private(repo / "pw", p.file_pw), private(repo / "rt", p.refresh_token)
        docs = [
            relay("by-file", smtp.port, ca, "file@x.test", selected=True,
                  **password({"file": str(pw)})),
            relay("by-env", smtp.port, ca, "env@x.test", **password({"env": "SWEEP_PASSWORD"})),
            relay("by-secret", smtp.port, ca, "k8s@x.test",
                  **password({"secretKeyRef": {"name": "smtp", "key": "password"}})),
            relay("refused", smtp.port, ca, "nobody@x.test", **password({"file": str(pw)})),
            relay("by-oauth", smtp.port, ca, "oauth@x.test", authentication="OAuth2",
                  oauth2ProviderRef={"name": "idp"}),
            {"apiVersion": API, "kind": "OAuth2Provider",
             "metadata": {"name": "idp", "namespace": NS},
             "spec": {"grantType": "RefreshToken", "clientId": "sweep",
                      "clientSecretFrom": {"env": "SWEEP_CLIENT_SECRET"},
                      # client_secret_basic: authlib does not form-encode the secret
                      # (RFC 6749 2.3.1) and these canaries hold reserved characters.
                      "tokenEndpointAuthMethod": "client_secret_post",
                      "refreshTokenFrom": {"file": str(rt)},
                      "tokenEndpoint": idp.token_url, "testEndpoint": idp.test_url}},
        ]
        for doc in docs[:4]:  # the password relays: the opt-in pipelined AUTH too
            doc["spec"]["connectionTest"]["pipelineAuth"] = True
        (repo / "relays.yaml").write_text(yaml.safe_dump_all(docs))
        f, st = ["-f", str(repo)], ["--state", str(state)]
        outputs: dict[str, str] = {}

        def run(name: str, *argv: str, expect: tuple[int, ...]) -> None:
            code, text = smtpctl(*argv)
            assert code in expect, (name, code, text)
            outputs[name] = text

        run("test -v", "test", *f, "-v", expect=(1,))
        run("test -v -o json", "test", *f, "-v", "-o", "json", expect=(1,))
        doc, _ = json.JSONDecoder().raw_decode(outputs["test -v -o json"])
        assert {i["name"]: i["passed"] for i in doc["items"]} == {
            "by-file": True, "by-env": True, "by-secret": True, "by-oauth": True,
            "refused": False}, doc["items"]
        piped = [i["name"] for i in doc["items"] if any(  # AUTH and QUIT in one write
            a["line"] == "AUTH PLAIN ******" and b["line"] == "QUIT"
            for a, b in zip(i["transcript"], i["transcript"][1:], strict=False))]
        assert sorted(piped) == ["by-env", "by-file", "by-secret", "refused"], piped
        run("apply -o json", "apply", *f, *st, "-o", "json", expect=(1,))
        # A second reader keeps the WAL: the CLI's close is then not the last one.
        reader = sqlite3.connect(state / "state.db")
        try:
            reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
            run("apply", "apply", *f, *st, expect=(0, 1))
            run("plan", "plan", *f, *st, expect=(0, 3))
            run("get -o yaml", "get", "all", "-A", *st, "-o", "yaml", expect=(0,))
            run("get active -o env", "get", "active", "-n", NS, *st, "-o", "env", expect=(0,))
            run("get active -o javamail", "get", "active", "-n", NS, *st, "-o", "javamail",
                expect=(0,))
            run("describe", "describe", "externalsmtp", "by-oauth", "refused", "by-secret",
                "-n", NS, *st, expect=(0,))
            run("reconcile", "reconcile", "--force", *st, "-o", "json", expect=(1,))
            run("oauth token", "oauth", "token", "idp", *f, expect=(0,))
            assert (state / "state.db-wal").exists()
            wal = {path.name: path.read_bytes() for path in state.iterdir()}
        finally:
            reader.close()
        # The endpoint rotated the refresh token: the new one (a canary) is in the file.
        assert rt.read_text().strip() != p.refresh_token
        assert smtp.auth_attempts, "no relay was contacted: the sweep would prove nothing"
        assert {a.username for a in smtp.auth_attempts} >= {
            "file@x.test", "env@x.test", "k8s@x.test", "oauth@x.test", "nobody@x.test"}
        assert idp.issued_access_tokens() >= 1
    for name, text in outputs.items():
        canary.assert_no_canary(text, where=f"smtpctl {name}")
    for name, data in wal.items():
        canary.assert_no_canary(data, where=f"state file {name}")
    canary.assert_no_canary_in_tree(state)
    canary.assert_no_canary(caplog.text, where="log records")
    assert "SMTP_PASSWORD" in outputs["get active -o env"]  # the key, never the value


# --- the operator --------------------------------------------------------------------------


def test_operator_outputs_hold_no_canary(tmp_path: Path) -> None:
    p = Planted()
    shared = tmp_path / "shared"
    shared.mkdir()
    private(shared / "pw", p.file_pw)
    with cluster(tmp_path, namespaces=(NS,)) as c, servers(p) as (smtp, idp):
        c.put_secret(NS, "relay-ca", {"ca.crt": smtp.ca_pem})
        c.put_secret(NS, "smtp", {"password": p.k8s_pw})
        c.put_secret(NS, "idp", {"client-secret": p.client_secret,
                                 "refresh-token": p.refresh_token})
        ca = {"caBundleFrom": {"secretKeyRef": {"name": "relay-ca", "key": "ca.crt"}},
              "serverName": "localhost"}

        def spec(user: str, priority: int, selected: bool = True, **auth: Any
                 ) -> dict[str, Any]:
            return {"host": "127.0.0.1", "port": smtp.port, "startTLS": True,
                    "username": user, "tls": ca, "selected": selected, "priority": priority,
                    "connectionTest": {"timeoutSeconds": 10, "checkRelay": False,
                                       "pipelineAuth": True}, **auth}

        c.co.create_namespaced_custom_object(GROUP, VERSION, NS, "oauth2providers", {
            "apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "idp"},
            "spec": {"grantType": "RefreshToken", "clientId": "sweep",
                     "clientSecretFrom": {"secretKeyRef": {"name": "idp", "key": "client-secret"}},
                     "tokenEndpointAuthMethod": "client_secret_post",
                     "refreshTokenFrom": {"secretKeyRef": {"name": "idp", "key": "refresh-token"}},
                     "tokenEndpoint": idp.token_url, "testEndpoint": idp.test_url}})
        c.create_smtp(NS, "by-oauth", spec("oauth@x.test", 10, authentication="OAuth2",
                                           oauth2ProviderRef={"name": "idp"}))
        c.create_smtp(NS, "by-secret", spec("k8s@x.test", 20, **password(
            {"secretKeyRef": {"name": "smtp", "key": "password"}})))
        c.create_smtp(NS, "by-env", spec("env@x.test", 30, **password({"env": "SWEEP_PW"})))
        c.create_smtp(NS, "by-file", spec("file@x.test", 40, **password(
            {"file": str(shared / "pw")})))
        c.create_smtp(NS, "refused", spec("nobody@x.test", 50, **password(
            {"secretKeyRef": {"name": "smtp", "key": "password"}})))
        with OperatorProcess(c, "sweep", "--allow-env-secret", "SWEEP_PW",
                             "--allow-file-secret-dir", str(shared),
                             env={"SWEEP_PW": p.env_pw}) as op:
            for name in ("by-oauth", "by-secret", "by-env", "by-file"):
                wait_for(f"{name} Ready", lambda n=name: condition(  # type: ignore[misc]
                    c.smtp(NS, n), "Ready").get("status") == "True", timeout=60)
            got = wait_for("refused to fail", lambda: condition(
                c.smtp(NS, "refused"), "Ready") or None, timeout=60)
            assert got["status"] == "False", got
            published = wait_for("the published Secret", lambda: c.secret_data(
                NS, "smtp-active-relay"), timeout=60)
            # Its one intended value: the active relay's password or a live access token.
            intended = ("SMTP_PASSWORD" if published.get("SMTP_AUTH") == "UsernamePassword"
                        else "SMTP_OAUTH2_TOKEN")
            value = published[intended]
            assert value in (p.k8s_pw, p.env_pw, p.file_pw) or idp.token_info(value), intended
            log = op.log_text()
        assert idp.issued_access_tokens() >= 1
        assert {a.username for a in smtp.auth_attempts} >= {
            "file@x.test", "env@x.test", "k8s@x.test", "oauth@x.test", "nobody@x.test"}
        emu = c.kube.emu
        assert emu is not None
        objects: list[Any] = []
        for api, plural in ((API, "externalsmtps"), (API, "oauth2providers"), ("v1", "events")):
            objects += c.kube.call(emu.list_objects, api, plural)
        secrets = {s["metadata"]["name"]: s for s in c.kube.call(emu.list_objects, "v1", "secrets")
                   if s["metadata"]["namespace"] == NS}
        pub = secrets["smtp-active-relay"]
        data = {k: v for k, v in (pub.get("data") or {}).items() if k != intended}
        assert len(data) > 5, data
        objects.append({**pub, "data": data})
        # The user's own Secrets hold the values by design (and the rotated refresh token).
        assert set(secrets) >= {"smtp", "idp", "relay-ca", "smtp-active-relay"}
    canary.assert_no_canary(json.dumps(objects), yaml.safe_dump(objects),
                            where="status, Events and the published Secret")
    canary.assert_no_canary(log, where="the operator's debug log")
    assert '"level":"debug"' in log  # -v: debug records were written and searched
