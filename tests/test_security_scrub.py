"""Scrubbing of server-provided text and caps on what reaches status (issue 9: medium
"error/error_description unscrubbed", "no cap on condition messages"; low "redaction misses
hex, URL-encoded, case-changed, line-split forms and base64 of secrets under 8 bytes").

Unit level for every form, then end to end: an SMTP server and a token endpoint that echo
what they received (in several encodings, with terminal escapes and line breaks) through
``smtpctl test -v``, ``apply``, status, Events, ``describe`` and the state file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.cli.main import main
from reconciler.credentials.base import CredentialError
from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.engine import conditions as cond
from reconciler.probe import run_probe
from reconciler.probe.redact import MAX_MESSAGE, Redactor, cap, sanitize
from reconciler.resources import OAuth2Provider
from reconciler.secret import MASK, Secret
from tests.support import canary
from tests.support.faults import FaultServer
from tests.support.hostile_http import HostileHttp
from tests.support.smtp_servers import USER, make_spec

ESC = "\x1b"


def forms_of(secret: str) -> dict[str, str]:
    raw = secret.encode()
    half = len(secret) // 2
    return {
        "plain": secret,
        "upper": secret.upper(),
        "swapcase": secret.swapcase(),
        "url": urllib.parse.quote(secret, safe=""),
        "url-lower": urllib.parse.quote(secret, safe="").lower(),
        "url-plus": urllib.parse.quote_plus(secret),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "crlf-split": secret[:half] + "\r\n" + secret[half:],
        "space-split": secret[:half] + " " + secret[half:],
        "escape-split": secret[:half] + f"{ESC}[0m" + secret[half:],
        "zero-width-split": secret[:half] + "\u200b" + secret[half:],
        "basic": "Basic " + base64.b64encode(b"client-id:" + raw).decode(),
        "b64url": base64.urlsafe_b64encode(b"\xff\xfe" + raw).decode(),
        "b64-wrapped": _wrapped(base64.b64encode(b"x" * 40 + raw + b"y" * 40).decode()),
    }


def _wrapped(blob: str, width: int = 20) -> str:
    return "\r\n".join(blob[i:i + width] for i in range(0, len(blob), width))


@pytest.mark.parametrize("form", sorted(forms_of("x")))
def test_every_form_of_a_secret_is_masked(form: str) -> None:
    secret = canary.canary("scrub")
    r = Redactor()
    r.add(Secret(secret))
    shown = r(f"535 you sent {forms_of(secret)[form]} ok", one_line=True)
    assert shown.startswith("535 you sent ") and shown.endswith(" ok"), shown
    assert MASK in shown
    assert canary.find_canary(shown) is None
    hidden = forms_of(secret)[form].replace("\r\n", "").replace(" ", "")
    assert hidden[4:-4] not in shown.replace(" ", "")


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=1, max_size=7), prefix=st.binary(max_size=12),
       suffix=st.binary(max_size=12))
def test_short_secrets_are_found_in_base64_at_every_offset(secret: bytes, prefix: bytes,
                                                          suffix: bytes) -> None:
    """Secrets under 8 bytes were found only verbatim, not inside base64."""
    r = Redactor()
    r.add(secret)
    blob = base64.b64encode(prefix + secret + suffix).decode()
    out = r.mask(f"334 {blob}")
    for decodable in _b64_words(out):
        assert secret not in decodable


def _b64_words(text: str) -> list[bytes]:
    out = []
    for word in text.split():
        for shift in range(4):
            w = word[shift:]
            w = w[: len(w) - len(w) % 4]
            with contextlib.suppress(binascii.Error, ValueError):
                out.append(base64.b64decode(w, validate=True))
    return out


def test_sanitize_makes_escapes_visible_and_folds_lines() -> None:
    evil = f"ok{ESC}]0;pwned\a{ESC}[2J\u202egnp.exe\r\nline2\x00"
    one = sanitize(evil, one_line=True)
    assert ESC not in one and "\u202e" not in one and "\x00" not in one and "\n" not in one
    assert "\\x1b" in one and "\\u202e" in one and "line2" in one
    multi = sanitize("a\r\nb\rc")
    assert multi == "a\nb\\rc"


def test_cap_never_leaves_the_start_of_a_secret_at_the_cut() -> None:
    secret = canary.canary("cut")
    r = Redactor()
    r.add(secret)
    text = "x" * 90 + secret[:12]  # a secret beginning exactly at the cut
    out = cap(text, 100, r)
    assert len(out) <= 140 and secret[:6] not in out
    assert cap("short") == "short"


def test_condition_messages_are_capped_under_the_crd_limit() -> None:
    """Above 32,768 characters the status write failed (422) and the operator retried every
    few seconds, re-posting the refresh token each time."""
    conds = cond.set_condition([], cond.READY, "False", "AuthenticationFailed", "y" * 100_000,
                               generation=1, now=0)
    assert len(conds[0]["message"]) <= MAX_MESSAGE < 32_768


# --- end to end: an SMTP server that echoes what it received --------------------------------


def echo_replies(secret: str) -> dict[str, str]:
    f = forms_of(secret)
    lines = [f"535-5.7.8 {name}: {value}" for name, value in f.items()
             if "\r\n" not in value] + [
        "535-5.7.8 you said {line}",  # the AUTH command line, AUTH PLAIN base64 payload
        "535-5.7.8 " + f["crlf-split"].split("\r\n")[0],
        "535-5.7.8 " + f["crlf-split"].split("\r\n")[1] + f" {ESC}[31mred{ESC}[0m \u202eevil",
        *(["535-5.7.8 " + "z" * 7000] * 3),  # and a huge reply (aiosmtplib's line cap: 8 KiB)
        "535 5.7.8 end",
    ]
    return {"AUTH": "\r\n".join(lines)}


async def test_smtp_replies_quoting_the_password_are_scrubbed_everywhere() -> None:
    password = canary.canary("smtp-echo")
    with FaultServer("ok", replies=echo_replies(password)) as server:
        spec = make_spec(server.port, mode="plain", allowPlaintextAuth=True)
        v = await run_probe(spec, _creds(password))
    assert (v.passed, v.reason) == (False, "AuthenticationFailed")
    everything = v.message + "\n".join(t.line for t in v.transcript) + repr(v.details)
    canary.assert_no_canary(everything, where="verdict")
    assert password[7:-4] not in everything
    assert ESC not in everything and "\u202e" not in everything
    assert len(v.message) <= MAX_MESSAGE
    assert all(len(t.line) <= 600 for t in v.transcript)


def _creds(password: str) -> Any:
    from reconciler.probe import ProbeCredentials

    return ProbeCredentials(password=Secret(password))


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_cli_test_verbose_and_the_local_store_never_show_an_echoed_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = canary.canary("cli-echo")
    monkeypatch.setenv("ECHO_PW", password)
    with FaultServer("ok", replies=echo_replies(password)) as server:
        manifest = tmp_path / "r.yaml"
        manifest.write_text(yaml.safe_dump({
            "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": "echo"},
            "spec": {"host": "127.0.0.1", "port": server.port, "startTLS": False,
                     "allowPlaintextAuth": True, "authentication": "UsernamePassword",
                     "username": USER, "passwordFrom": {"env": "ECHO_PW"},
                     "connectionTest": {"timeoutSeconds": 5}}}))
        state = str(tmp_path / "state")
        outputs = [run("test", "-f", str(manifest), "-v", "--allow-env", "ECHO_PW")[1],
                   run("test", "-f", str(manifest), "-o", "json",
                       "--allow-env", "ECHO_PW")[1],
                   run("apply", "-f", str(manifest), "--state", state,
                       "--allow-env", "ECHO_PW")[1],
                   run("describe", "esmtp", "echo", "--state", state)[1],
                   run("get", "esmtp", "echo", "-o", "yaml", "--state", state)[1]]
    for out in outputs:
        canary.assert_no_canary(out, where="smtpctl output")
        assert password[7:-4] not in out and ESC not in out and "\u202e" not in out
    canary.assert_no_canary_in_tree(Path(state))
    db = sqlite3.connect(Path(state) / "state.db")
    (status,) = db.execute("SELECT status FROM resources").fetchone()
    ready = cond.find(json.loads(status)["conditions"], cond.READY) or {}
    assert ready["reason"] == "AuthenticationFailed"
    assert len(ready["message"]) <= MAX_MESSAGE


# --- end to end: a token endpoint that echoes the client secret -------------------------------


def echo_description(raw: bytes) -> str:
    """What an echoing endpoint says: the request's form and Authorization header, quoted in
    several encodings, with a terminal escape and a line break."""
    head, _, body = raw.partition(b"\r\n\r\n")
    auth = [h for h in head.split(b"\r\n") if h.lower().startswith(b"authorization:")]
    secret = urllib.parse.parse_qs(body.decode()).get("client_secret", [""])[0]
    parts = [f"form={body.decode()}", f"secret={secret}",
             f"upper={secret.upper()}", f"hex={secret.encode().hex()}",
             f"{ESC}[2J\nsplit={secret[:5]}\n{secret[5:]}"]
    parts += [h.decode() for h in auth]  # Basic base64(id:secret)
    if auth:
        basic = base64.b64decode(auth[0].split()[-1])
        parts.append("decoded=" + urllib.parse.quote(basic.decode()))
    return " ".join(parts)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_oauth_error_descriptions_never_show_what_we_sent(method: str) -> None:
    with HostileHttp("echo", describe=echo_description) as echo:
        provider = OAuth2Provider.model_validate({
            "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
            "metadata": {"name": "p", "namespace": "t"},
            "spec": {"grantType": "ClientCredentials", "clientId": "client-id",
                     "clientSecretFrom": {"env": "CS"}, "tokenEndpoint": echo.url,
                     "tokenEndpointAuthMethod": method}})
        tokens = TokenManager(SourceRouter(env=EnvSource({"CS": canary.CLIENT_SECRET})))
        with pytest.raises(CredentialError) as exc:
            await tokens.token(provider)
    assert canary.CLIENT_SECRET.encode() in echo.requests[0] or method == "client_secret_basic"
    message = exc.value.message
    canary.assert_no_canary(message, where="error message")
    assert canary.CLIENT_SECRET[7:] not in message and canary.CLIENT_SECRET.encode().hex() \
        not in message
    assert ESC not in message and "\n" not in message and len(message) < 600
    assert exc.value.reason == "OAuth2InvalidClient"
