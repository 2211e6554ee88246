"""The low findings of issue 9 (and one message of issue 13), each fixed or refused with a
clear error: bounded input reads, numbers that do not fit, a hostile expires_in, a bad state
directory for plan, an invalid CA bundle, control characters in manifest fields and in the
JavaMail output, an abortable `oauth login` listener, an empty refresh-token source.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.credentials.base import CredentialError
from reconciler.credentials.login import login
from reconciler.credentials.oauth import TokenManager, check_provider
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.engine.active import ActiveRelayView, render_javamail
from reconciler.resources import OAuth2Provider
from tests.support import canary
from tests.support.hostile_http import HostileHttp
from tests.support.oauth_server import GMAIL_SCOPE, provider
from tests.support.oauth_server import oauth_server as oauth_server

ROOT = Path(__file__).resolve().parent.parent
API = "smtp.reconciler.dev/v1alpha1"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def smtpctl(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a process: a hang fails the 60 s bound instead of the suite."""
    return subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True,
                          text=True, cwd=cwd, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("command", [["validate"], ["test"], ["plan", "--state", "st"],
                                     ["apply", "--state", "st"]])
@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_inputs_are_read_bounded_and_never_block(tmp_path: Path, command: list[str],
                                                 source: str) -> None:
    """`-f /dev/zero` read until memory ran out; `-f FIFO` blocked for ever."""
    if source == "fifo":
        os.mkfifo(tmp_path / "fifo")
    done = smtpctl(command[0], "-f", source, *command[1:], cwd=tmp_path)
    # A FIFO nobody writes to is an empty input (validate: nothing to check, exit 0).
    assert done.returncode in ((0, 1, 2) if source == "fifo" else (1, 2)), done.stderr
    assert "Traceback" not in done.stderr
    if source == "/dev/zero":
        assert "larger than the limit" in done.stdout + done.stderr


@pytest.mark.parametrize("command", [["validate"], ["test"], ["plan"], ["apply"]])
def test_a_4300_digit_integer_is_a_diagnostic_not_a_traceback(tmp_path: Path,
                                                              command: list[str]) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(f"apiVersion: {API}\nkind: ExternalSmtp\nmetadata: {{name: a}}\n"
                    f"spec: {{host: h, port: {'9' * 4400}}}\n")
    code, out = run(command[0], "-f", str(path),
                    *(["--state", str(tmp_path / "st")] if command[0] in ("plan", "apply")
                      else []))
    assert code == 1, out
    assert "Traceback" not in out and "integers are limited to 4,300 digits" in out
    assert f"{path}:4:" in out or "big.yaml:4:" in out


@pytest.mark.parametrize("state", ["a-file", "damaged"])
def test_plan_on_a_bad_state_directory_is_a_clear_error(tmp_path: Path, state: str) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": API, "kind": "ExternalSmtp",
                                        "metadata": {"name": "a"},
                                        "spec": {"host": "h", "port": 25,
                                                 "authentication": "None"}}))
    target = tmp_path / "state"
    if state == "a-file":
        target.write_text("not a directory")
    else:
        target.mkdir(mode=0o700)
        (target / "state.db").write_bytes(b"garbage" * 100)
        os.chmod(target / "state.db", 0o600)
    code, out = run("plan", "-f", str(manifest), "--state", str(target))
    assert code == 2 and "Traceback" not in out, out
    assert str(target) in out


def test_an_invalid_ca_bundle_is_a_configuration_error_in_test(tmp_path: Path) -> None:
    """It was reported as a server ProtocolError ("unexpected SSLError")."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": "a"},
        "spec": {"host": "127.0.0.1", "port": 9, "startTLS": True, "authentication": "None",
                 "tls": {"caBundleFrom": {"file": str(ca)}}}}))
    code, out = run("test", "-f", str(manifest), "-o", "json")
    assert code == 1
    (item,) = json.loads(out)["items"]
    assert (item["stage"], item["reason"]) == ("credentials", "CABundleInvalid")


async def test_expires_in_1e400_does_not_overflow() -> None:
    """`expires_in: 1e400` (infinity once parsed) ended in a traceback (authlib's
    ``int(expires_in)``).  It is a malformed token response now; a large finite value is
    clamped to a year."""
    body = b'{"access_token": "%s", "token_type": "Bearer", "expires_in": 1e400}' % (
        canary.ACCESS_TOKEN_PREFIX.encode() + b"x1")
    with HostileHttp("raw", raw_body=body) as endpoint:
        p = OAuth2Provider.model_validate({
            "apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "p"},
            "spec": {"grantType": "ClientCredentials", "clientId": "c",
                     "clientSecretFrom": {"env": "CS"}, "tokenEndpoint": endpoint.url}})
        tokens = TokenManager(SourceRouter(env=EnvSource({"CS": canary.CLIENT_SECRET})))
        check = await check_provider(p, tokens)
    assert (check.ready, check.reason) == (False, "OAuth2TokenEndpointError"), check.message
    assert "malformed" in check.message
    body = body.replace(b"1e400", b"1e300")
    with HostileHttp("raw", raw_body=body) as endpoint:
        p = OAuth2Provider.model_validate({
            "apiVersion": API, "kind": "OAuth2Provider", "metadata": {"name": "p"},
            "spec": {"grantType": "ClientCredentials", "clientId": "c",
                     "clientSecretFrom": {"env": "CS"}, "tokenEndpoint": endpoint.url}})
        tokens = TokenManager(SourceRouter(env=EnvSource({"CS": canary.CLIENT_SECRET})))
        check = await check_provider(p, tokens)
    assert check.ready, check.message
    left = tokens.expires_in(p)
    assert left is not None and math.isfinite(left) and left <= 366 * 86400
    assert int(left) > 0  # what the publisher does with it


def test_control_characters_in_manifest_fields_are_refused(tmp_path: Path) -> None:
    for field, value in (("username", "a\rmail.smtp.host=evil.example"),
                         ("from", "x@example.test\n"), ("serverName", "h\x1b[31m")):
        spec: dict[str, Any] = {"host": "h", "port": 25, "authentication": "UsernamePassword",
                                "username": "u", "passwordFrom": {"env": "P"}}
        if field == "serverName":
            spec["tls"] = {field: value}
        else:
            spec[field] = value
        path = tmp_path / f"{field}.yaml"
        path.write_text(json.dumps({"apiVersion": API, "kind": "ExternalSmtp",
                                    "metadata": {"name": "a"}, "spec": spec}))
        code, out = run("validate", "-f", str(path))
        assert code == 1 and field in out, (field, out)
    probe = tmp_path / "probe.yaml"
    probe.write_text(json.dumps({"apiVersion": API, "kind": "ExternalSmtp",
                                 "metadata": {"name": "a"},
                                 "spec": {"host": "h", "port": 25, "authentication": "None",
                                          "connectionTest": {"probeRecipient": "a\x00@b"}}}))
    assert run("validate", "-f", str(probe))[0] == 1
    crd = (ROOT / "manifests" / "crds" / "externalsmtps.smtp.reconciler.dev.yaml").read_text()
    assert crd.count("^[^\\x00-\\x1f\\x7f]*$") >= 4


def test_javamail_output_escapes_line_breaks_in_every_value() -> None:
    """A username holding "\\r" injected mail.smtp.host into `get active -o javamail`
    (Java's Properties ends a line at \\r, \\n or \\r\\n).  Values stored before the schema
    refused control characters are escaped when printed."""
    view = ActiveRelayView("default", "r", {
        "generation": 1, "host": "relay.example.test", "port": 587, "tlsMode": "starttls",
        "authentication": "UsernamePassword", "username": "u\rmail.smtp.host=evil.example",
        "from": "f@example.test\nmail.smtp.port=25",
        "passwordFrom": {"file": "/x\nmail.smtp.auth=false"}})
    text = render_javamail(view)
    props: dict[str, str] = {}
    for line in re.split(r"\r\n|\r|\n", text):  # Java's line terminators
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            props.setdefault(key, value)
    assert props["mail.smtp.host"] == "relay.example.test"
    assert props.get("mail.smtp.port") == "587" and props.get("mail.smtp.auth") == "true"


async def test_oauth_login_cannot_be_aborted_by_another_local_process(
        oauth_server: Any, tmp_path: Path) -> None:
    """Any local process could end `oauth login` by calling the listener with any state."""
    rt = tmp_path / "rt"
    p = provider(oauth_server, grant="AuthorizationCode", client_id="cli-app",
                 refresh_token_from={"file": str(rt)}, scopes=[GMAIL_SCOPE, "offline_access"])
    tasks: list[asyncio.Task[None]] = []
    stray: list[int] = []

    async def browse(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        async with httpx.AsyncClient(timeout=5) as http:
            # Another local process, first: a wrong state (and a code it made up).
            r = await http.get(redirect, params={"state": "evil", "code": "made-up"})
            stray.append(r.status_code)
            r = await http.get(url)  # then the user's browser
            await http.get(r.headers["location"])

    def open_browser(url: str) -> bool:
        tasks.append(asyncio.get_running_loop().create_task(browse(url)))
        return True

    sources = SourceRouter(env=EnvSource({}))
    result = await login(p, sources, TokenManager(sources), announce=lambda _u: None,
                         open_browser=open_browser, timeout_seconds=20)
    for t in tasks:
        await t
    assert stray == [400]
    assert result.persisted and rt.read_text().strip() == result.refresh_token.reveal()


def test_an_empty_refresh_token_source_says_how_to_obtain_one(
        oauth_server: Any, tmp_path: Path) -> None:
    """Issue 13: "file is empty" instead of "run `smtpctl oauth login ...`"."""
    rt = tmp_path / "rt"
    rt.write_text("")
    rt.chmod(0o600)
    manifest = tmp_path / "provider.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": API, "kind": "OAuth2Provider",
        "metadata": {"name": "gmail", "namespace": "mail"},
        "spec": {"grantType": "AuthorizationCode", "clientId": "cli-app",
                 "refreshTokenFrom": {"file": str(rt)}, "scopes": [GMAIL_SCOPE],
                 "tokenEndpoint": oauth_server.token_url,
                 "authorizationEndpoint": oauth_server.authorize_url}}))
    code, out = run("oauth", "token", "gmail", "-f", str(manifest))
    assert code == 1
    assert f"run `smtpctl oauth login gmail -f {manifest} -n mail`" in out, out
    assert oauth_server.requests == []
    with pytest.raises(CredentialError) as exc:  # the same through the token manager
        asyncio.run(TokenManager(SourceRouter()).token(
            OAuth2Provider.model_validate(yaml.safe_load(manifest.read_text()))))
    assert "oauth login gmail" in exc.value.message
