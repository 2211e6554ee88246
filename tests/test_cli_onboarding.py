"""Onboarding: `smtpctl dev` (loopback servers + working manifests), `smtpctl init`
(well-known providers) and `smtpctl import` (JavaMail / Spring properties)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.cli.main import main
from reconciler.wellknown import PROVIDERS
from tests.support import canary
from tests.support.terminal import smtpctl

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "cli-result.v1.json").read_text())


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def validate_strict(path: Path) -> None:
    code, out, _ = run("validate", "--strict", "-f", str(path))
    assert code == 0, out


# --- init -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [p.key for p in PROVIDERS])
def test_init_scaffolds_a_valid_manifest_per_provider(key: str, tmp_path: Path) -> None:
    code, out, err = run("init", key)
    assert code == 0, err
    path = tmp_path / f"{key}.yaml"
    path.write_text(out)
    validate_strict(path)  # every scaffold passes validate, warnings included
    docs = list(yaml.safe_load_all(out))
    relay = next(d for d in docs if d["kind"] == "ExternalSmtp")["spec"]
    assert "# Before you apply:" in out and "# yaml-language-server: $schema=" in out
    assert relay.get("selected") is True and relay["from"]
    if relay["authentication"] == "UsernamePassword":
        assert relay["passwordFrom"] == {"file": f"secrets/{key}-password"}
    code, out, _ = run("init", key, "-o", "json")
    env = json.loads(out)
    jsonschema.validate(env, SCHEMA)
    assert [i["manifest"] for i in env["items"]] == docs


def test_init_knows_what_each_provider_needs(tmp_path: Path) -> None:
    def relay(key: str, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        code, out, _ = run("init", key, *args)
        assert code == 0
        docs = list(yaml.safe_load_all(out))
        return next(d for d in docs if d["kind"] == "ExternalSmtp")["spec"], docs

    ses, _ = relay("ses")  # SES: implicit TLS on 465 via socketFactory
    assert (ses["port"], ses["socketFactory"]) == (465, {
        "class": "javax.net.ssl.SSLSocketFactory", "port": 465, "fallback": False})
    assert "startTLS" not in ses
    sendgrid, _ = relay("sendgrid")
    assert sendgrid["username"] == "apikey" and "@" in sendgrid["from"]
    gmail, _ = relay("gmail")
    assert (gmail["host"], gmail["port"], gmail["startTLS"]) == ("smtp.gmail.com", 587, True)
    m365, docs = relay("microsoft365", "--tenant", "contoso.onmicrosoft.com",
                       "--secret", "secret:m365/client-secret", "-n", "mail")
    provider = docs[0]
    assert provider["spec"]["grantType"] == "ClientCredentials"
    assert provider["spec"]["scopes"] == ["https://outlook.office365.com/.default"]
    assert provider["spec"]["tokenEndpoint"] == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
    assert provider["spec"]["clientSecretFrom"] == {
        "secretKeyRef": {"name": "m365", "key": "client-secret"}}
    assert m365["authentication"] == "OAuth2" and m365["oauth2ProviderRef"] == {
        "name": "microsoft365-idp"}
    assert {d["metadata"]["namespace"] for d in docs} == {"mail"}
    # The "replace TENANT" note stayed in "Before you apply" after --tenant had replaced it.
    assert "TENANT" not in run("init", "microsoft365", "--tenant", "contoso.com")[1]
    code, out, _ = run("init", "microsoft365")
    assert "TENANT/oauth2" in out and "replace TENANT in tokenEndpoint" in out
    assert run("init", "nope")[0] == 2
    assert run("init", "gmail", "--secret", "vault:x")[0] == 2
    code, out, _ = run("init", "--list")
    assert code == 0 and all(p.key in out for p in PROVIDERS)


@pytest.mark.parametrize("key", [p.key for p in PROVIDERS
                                 if any("oauth login" in n for n in p.notes)])
@pytest.mark.parametrize("extra", [(), ("--name", "corp", "-n", "mail")])
def test_the_login_command_init_prints_finds_its_provider(key: str, extra: tuple[str, ...],
                                                          tmp_path: Path) -> None:
    # The note told users to run `smtpctl oauth login gmail-oauth` while the scaffold named
    # its provider gmail-oauth-idp: the command answered "not found".
    import shlex

    from reconciler.cli import cmd_oauth
    from reconciler.cli.main import build_parser

    code, out, err = run("init", key, *extra, "-o", "json")
    assert code == 0, err
    items = json.loads(out)["items"]
    manifest = tmp_path / "relay.yaml"
    manifest.write_text(yaml.safe_dump_all([i["manifest"] for i in items]))
    notes = [n for i in items for n in i.get("notes") or [] if "oauth login" in n]
    assert len(notes) == 1, notes
    command = shlex.split(notes[0].split("`")[1])
    assert command[:3] == ["smtpctl", "oauth", "login"]
    argv = [str(manifest) if a == "FILE" else a for a in command[2:]]
    args = build_parser("oauth").parse_args(argv)
    with contextlib.redirect_stderr(io.StringIO()) as problems:
        provider = cmd_oauth._load_provider(args)
    assert not isinstance(provider, int), problems.getvalue()
    wanted = next(i["manifest"] for i in items if i["kind"] == "OAuth2Provider")
    assert provider.metadata.name == wanted["metadata"]["name"]
    assert (provider.metadata.namespace == "mail") == ("-n" in extra)


# --- import -----------------------------------------------------------------------------------


def test_import_javamail_properties_never_copies_the_password(tmp_path: Path) -> None:
    f = tmp_path / "mail.properties"
    f.write_text("mail.smtp.host = smtp.office365.com\nmail.smtp.port: 587\n"
                 "mail.smtp.auth=true\nmail.smtp.starttls.enable=true\n"
                 "mail.smtp.user=app@contoso.com\n"
                 f"mail.smtp.password={canary.PASSWORD}\n"
                 "mail.smtp.ssl.trust=*\nmail.smtp.timeout=10000\nmail.debug=true\n")
    for fmt in ("text", "json", "yaml"):
        code, out, err = run("import", "-f", str(f), "-o", fmt)
        assert code == 0, err
        canary.assert_no_canary(out, err, where=f"smtpctl import -o {fmt}")
    code, out, _ = run("import", "-f", str(f))
    doc = yaml.safe_load(out)
    spec = doc["spec"]
    assert (spec["host"], spec["port"], spec["startTLS"]) == ("smtp.office365.com", 587, True)
    assert spec["authentication"] == "UsernamePassword" and spec["username"] == "app@contoso.com"
    assert spec["passwordFrom"] == {"file": "secrets/smtp-office365-com-password"}
    assert spec["connectionTest"] == {"timeoutSeconds": 20}
    assert "tls" not in spec  # ssl.trust=* is not carried over as verify: false
    # The notes are comments wrapped at 88 columns, where the (temporary) path falls: read
    # them as one text (the break moved with the path's length: this failed under -n 0).
    notes = " ".join(line.lstrip("#- ").strip() for line in out.splitlines()
                     if line.startswith("#"))
    assert "the password in" in notes and "was NOT copied" in notes
    assert "mail.smtp.ssl.trust=* was not carried over" in notes
    path = tmp_path / "relay.yaml"
    path.write_text(out)
    validate_strict(path)


def test_import_spring_yaml_and_properties(tmp_path: Path) -> None:
    yml = tmp_path / "application.yml"
    yml.write_text(yaml.safe_dump({"spring": {"mail": {
        "host": "email-smtp.eu-west-1.amazonaws.com", "port": 465, "protocol": "smtps",
        "username": "AKIAEXAMPLE", "password": "${SES_SMTP_PASSWORD}",
        "properties": {"mail.smtp.from": "noreply@example.com",
                       "mail.smtp.socketFactory.fallback": True}}},
        "server": {"port": 8080}}))
    props = tmp_path / "application.properties"
    props.write_text("spring.mail.host=smtp.sendgrid.net\nspring.mail.port=587\n"
                     "spring.mail.username=apikey\n"
                     f"spring.mail.password={canary.PASSWORD}\n"
                     "spring.mail.properties.mail.smtp.auth=true\n"
                     "spring.mail.properties.mail.smtp.starttls.enable=true\n"
                     "spring.mail.properties.mail.smtp.from=app@example.com\n")
    code, out, err = run("import", "-f", str(yml), str(props), "--secret",
                         "secret:sendgrid/api-key", "-n", "mail")
    assert code == 0, err
    canary.assert_no_canary(out, err)
    ses, sendgrid = (d["spec"] for d in yaml.safe_load_all(out))
    assert ses["socketFactory"] == {"class": "javax.net.ssl.SSLSocketFactory", "port": 465,
                                    "fallback": False}  # fallback: true is a downgrade
    assert ses["passwordFrom"] == {"secretKeyRef": {"name": "sendgrid", "key": "api-key"}}
    assert (sendgrid["username"], sendgrid["startTLS"], sendgrid["from"]) == (
        "apikey", True, "app@example.com")
    path = tmp_path / "out.yaml"
    path.write_text(out)
    validate_strict(path)
    # without --secret, a Spring placeholder becomes an env reference
    code, out, _ = run("import", "-f", str(yml))
    assert yaml.safe_load(out)["spec"]["passwordFrom"] == {"env": "SES_SMTP_PASSWORD"}


def test_import_refuses_what_it_cannot_translate(tmp_path: Path) -> None:
    f = tmp_path / "p.properties"
    f.write_text("mail.smtp.host=${SMTP_HOST}\n")
    code, _, err = run("import", "-f", str(f))
    assert code == 1 and "placeholder" in err
    f.write_text("mail.smtp.port=25\n")
    code, _, err = run("import", "-f", str(f))
    assert code == 1 and "no SMTP host" in err
    assert run("import", "-f", str(tmp_path / "missing.properties"))[0] == 2


# --- dev servers --------------------------------------------------------------------------------


def test_dev_keeps_servers_running_with_working_manifests(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    work = tmp_path / "dev"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(smtpctl("dev", "--dir", str(work)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    reader = threading.Thread(target=pump, daemon=True)  # the only reader of its stdout
    reader.start()
    seen: list[str] = []
    try:
        while not any("Try, from another shell" in s for s in seen):
            line = lines.get(timeout=30)  # bounded: the servers start in about a second
            assert line, "smtpctl dev exited early:\n" + "".join(seen)
            seen.append(line)
        # a user's manifests pass against the running servers, from another process's view
        monkeypatch.chdir(tmp_path)
        code, out, err = run("test", "-f", str(work), "-o", "json")
        result = json.loads(out)
        assert code == 0, (result["diagnostics"], err)
        assert sorted(i["name"] for i in result["items"]) == [
            "dev-implicit-tls", "dev-oauth", "dev-starttls"]
        code, out, err = run("apply", "-f", str(work), "--state", str(tmp_path / "state"))
        assert code == 0, out + err
        code, out, _ = run("get", "active", "-o", "env", "--state", str(tmp_path / "state"))
        assert code == 0 and "SMTP_RELAY='default/dev-starttls'" in out
        # the secrets are files below the manifests' directory, never in the manifests
        for manifest in work.glob("*.yaml"):
            text = manifest.read_text()
            assert (work / "secrets" / "smtp-password").read_text().strip() not in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        # Not communicate(): it would read and close stdout under the reader thread, which
        # then died with "I/O operation on closed file" (an unhandled-thread-exception
        # warning in a later test of the same worker).
        reader.join(timeout=30)
    rest = []
    while not lines.empty():
        rest.append(lines.get_nowait())
    assert not reader.is_alive(), "smtpctl dev's output did not end after it exited"
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.returncode == 0, "".join(seen) + "".join(rest)


def test_a_missing_extra_is_named(tmp_path: Path) -> None:
    """In the light install (no pydantic), `apply` says which extra to install, exit 2;
    validate, init and import work."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pydantic', 'aiosmtplib', 'httpx', 'rich'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from reconciler.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    f = tmp_path / "r.yaml"
    f.write_text(run("init", "internal")[1])
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def light(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", blocker, *argv], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60, check=False)

    done = light("apply", "-f", str(f))
    assert done.returncode == 2, done.stderr
    assert "pip install 'smtpctl[cli]'" in done.stderr and "Traceback" not in done.stderr
    assert light("validate", "-f", str(f)).returncode == 0
    assert light("init", "ses").returncode == 0
    assert light("--help").returncode == 0
