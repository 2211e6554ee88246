"""``smtpctl validate`` end to end: examples, invalid examples, output formats, exit codes,
cross-document checks, secrets, and the import budget."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from tests.support.canary import PASSWORD, assert_no_canary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "manifests" / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
API = "apiVersion: smtp.reconciler.dev/v1alpha1"

RELAY = f"""{API}
kind: ExternalSmtp
metadata: {{name: NAME}}
spec:
  host: relay.example.com
  port: 25
  authentication: None
  from: a@example.com
"""


def run(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["validate", *args])
    out, err = capfd.readouterr()
    assert_no_canary(out, err)
    return rc, out


def run_json(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """validate's result envelope, seen as {valid, documents, skipped, errors} (the
    envelope's own shape is asserted in test_json_output_is_the_result_envelope)."""
    rc, out = run(capfd, *args, "-o", "json")
    env = json.loads(out)
    assert env["exitCode"] == rc and env["ok"] == (rc == 0)
    s = env["summary"]
    return rc, {"valid": s["valid"], "documents": s["documents"], "skipped": s["skipped"],
                "errors": env["diagnostics"]}


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


# --- examples -------------------------------------------------------------------------


def test_every_example_is_valid_without_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    args = [a for f in files for a in ("-f", f)]
    rc, report = run_json(capfd, *args, "--strict")
    assert rc == 0, report["errors"]
    assert report == {"valid": True, "documents": 6, "skipped": 0, "errors": []}


def test_examples_cover_the_issue_scenarios() -> None:
    text = "\n".join(p.read_text() for p in EXAMPLES.glob("*.yaml"))
    for needle in ("smtp.gmail.com", "smtp.office365.com", "kind: OAuth2Provider",
                   "javax.net.ssl.SSLSocketFactory", "port: 465", "smtp.sendgrid.net",
                   "authentication: None", "yaml-language-server: $schema="):
        assert needle in text, needle


def _expectation(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ")
    raise AssertionError(f"{path} has no '# expect:' line")


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_example_fails_with_documented_message(
        path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    rc, report = run_json(capfd, "-f", str(path))
    assert rc == 1 and report["valid"] is False
    errors = [e for e in report["errors"] if e["severity"] == "error"]
    hits = [e for e in errors if _expectation(path) in e["message"]]
    assert hits, (path.name, [e["message"] for e in errors])
    assert all(e["line"] > 0 and e["column"] > 0 for e in hits)
    assert all(e["file"] == str(path) for e in report["errors"])


def test_invalid_examples_are_documented() -> None:
    doc = (ROOT / "docs" / "validate.md").read_text()
    for path in INVALID:
        assert path.name in doc, path.name
        assert _expectation(path) in doc, path.name


def test_a_directory_of_mixed_examples_reports_every_file(
        capfd: pytest.CaptureFixture[str]) -> None:
    rc, report = run_json(capfd, "-f", str(EXAMPLES))
    assert rc == 1
    files = {Path(e["file"]).name for e in report["errors"] if e["severity"] == "error"}
    assert files == {p.name for p in INVALID}


# --- positions and messages -------------------------------------------------------------


def test_error_points_at_line_and_column(tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "r.yaml", RELAY.replace("NAME", "a").replace("port: 25", "port: 70000"))
    rc, report = run_json(capfd, "-f", f)
    assert rc == 1
    assert report["errors"] == [{
        "file": f, "line": 6, "column": 9, "path": "spec.port", "kind": "ExternalSmtp",
        "name": "a", "severity": "error",
        "message": "70000 is greater than the maximum of 65535"}]


def test_every_problem_in_every_document_is_reported(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad = f"""{API}
kind: ExternalSmtp
metadata: {{name: a}}
spec:
  host: "smtp.example.com:587"
  port: 0
  authentication: Basic
---
{API}
kind: OAuth2Provider
metadata: {{name: p}}
spec: {{grantType: ClientCredentials, clientId: c, tokenEndpoint: "http://x"}}
"""
    rc, report = run_json(capfd, "-f", write(tmp_path, "b.yaml", bad))
    assert rc == 1 and report["documents"] == 2
    paths = {(e["name"], e["path"]) for e in report["errors"]}
    assert {("a", "spec.host"), ("a", "spec.port"), ("a", "spec.authentication"),
            ("p", "spec"), ("p", "spec.tokenEndpoint")} <= paths
    lines = {e["path"]: e["line"] for e in report["errors"]}
    assert (lines["spec.host"], lines["spec.port"], lines["spec.tokenEndpoint"]) == (5, 6, 12)


def test_other_kinds_are_skipped_and_counted(tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    text = RELAY.replace("NAME", "a") + "---\napiVersion: apps/v1\nkind: Deployment\n" \
        "metadata: {name: web}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
    rc, report = run_json(capfd, "-f", write(tmp_path, "mixed.yaml", text))
    assert (rc, report["documents"], report["skipped"], report["errors"]) == (0, 1, 2, [])
    # junit counts what the text summary counts (it said skipped="0" before)
    rc, out = run(capfd, "-f", str(tmp_path / "mixed.yaml"), "-o", "junit")
    root = ET.fromstring(out)
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("skipped")) == ("3", "2")
    assert len(root.findall(".//skipped")) == 2


# --- cross-document checks, strict, status ----------------------------------------------


def test_dangling_provider_reference_is_a_warning_and_an_error_when_strict(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    text = f"""{API}
kind: ExternalSmtp
metadata: {{name: m, namespace: mail}}
spec:
  host: smtp.office365.com
  port: 587
  startTLS: true
  authentication: OAuth2
  username: a@example.com
  oauth2ProviderRef: {{name: missing}}
"""
    f = write(tmp_path, "r.yaml", text)
    rc, report = run_json(capfd, "-f", f)
    assert rc == 0 and report["valid"] is True
    [w] = report["errors"]
    assert w["severity"] == "warning" and w["path"] == "spec.oauth2ProviderRef.name"
    assert "no OAuth2Provider 'missing' in namespace 'mail'" in w["message"]
    rc, report = run_json(capfd, "-f", f, "--strict")
    assert rc == 1 and report["errors"][0]["severity"] == "error"
    provider = str(EXAMPLES / "microsoft365-oauth2.yaml")
    rc, report = run_json(capfd, "-f", provider, "-f", f)  # same namespace, other name
    assert any("missing" in e["message"] for e in report["errors"])


def test_two_selected_relays_in_one_namespace_warn(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    one = RELAY.replace("NAME", "a") + "  selected: true\n"
    two = RELAY.replace("NAME", "b") + "  selected: true\n"
    other_ns = RELAY.replace("NAME", "c").replace("{name: c}", "{name: c, namespace: x}") \
        + "  selected: true\n"
    rc, report = run_json(capfd, "-f", write(tmp_path, "a.yaml", one),
                          "-f", write(tmp_path, "b.yaml", two + "---\n" + other_ns))
    assert rc == 0
    [w] = report["errors"]
    assert w["name"] == "b" and "'a' is also selected" in w["message"]


def test_status_is_rejected_unless_allowed(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    text = RELAY.replace("NAME", "a") + (
        "status:\n  observedGeneration: 1\n  conditions:\n  - type: Ready\n    status: 'True'\n"
        "    reason: TestPassed\n    lastTransitionTime: 2026-01-01T00:00:00Z\n")
    f = write(tmp_path, "s.yaml", text)
    rc, report = run_json(capfd, "-f", f)
    assert rc == 1 and report["errors"][0]["path"] == "status"
    # unquoted timestamps stay strings (as in Kubernetes), so round-tripped output passes
    rc, report = run_json(capfd, "-f", f, "--allow-status")
    assert rc == 0, report


def test_kubectl_list_output_is_expanded(tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + RELAY.replace("NAME", n).replace("\n", "\n  ").rstrip() + "\n" for n in "ab")
    text = text.replace("port: 25", "port: 0", 1)
    rc, report = run_json(capfd, "-f", write(tmp_path, "list.yaml", text))
    assert rc == 1 and report["documents"] == 2
    [e] = report["errors"]
    assert e["path"] == "items[0].spec.port" and e["name"] == "a" and e["line"] == 9


# --- output formats -----------------------------------------------------------------------


def _bad_file(tmp_path: Path) -> str:
    text = RELAY.replace("NAME", "a").replace("port: 25", "port: 70000") + "---\n" + \
        RELAY.replace("NAME", "b") + "  tls: {verify: false}\n"
    return write(tmp_path, "bad.yaml", text)


def test_json_output_is_the_result_envelope(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capfd, "-f", _bad_file(tmp_path), "-o", "json")
    env = json.loads(out)
    assert rc == 1
    assert list(env) == ["apiVersion", "kind", "command", "ok", "exitCode", "summary",
                         "items", "events", "diagnostics"]
    assert (env["command"], env["ok"], env["exitCode"]) == ("validate", False, 1)
    assert env["summary"] == {"valid": False, "files": 1, "documents": 2, "skipped": 0,
                              "errors": 1, "warnings": 1}
    assert [(i["name"], i["valid"], i["document"]) for i in env["items"]] == [
        ("a", False, 1), ("b", True, 2)]
    for e in env["diagnostics"]:
        assert list(e) == ["file", "line", "column", "path", "kind", "name", "severity",
                           "message"]
    assert [e["severity"] for e in env["diagnostics"]] == ["error", "warning"]
    rc, out = run(capfd, "-f", _bad_file(tmp_path), "-o", "yaml")
    assert rc == 1 and yaml.safe_load(out) == env


def test_text_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    f = _bad_file(tmp_path)
    rc, out = run(capfd, "-f", f)
    lines = out.splitlines()
    assert rc == 1
    assert lines[0] == (f"{f}:6:9: error: spec.port: 70000 is greater than the maximum of "
                        "65535 [ExternalSmtp/a]")
    assert lines[1].startswith(f"{f}:") and ": warning: spec.tls.verify: " in lines[1]
    assert lines[-1].startswith("INVALID: 2 document(s) checked, 0 skipped")


def test_junit_output_is_a_test_report(tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capfd, "-f", _bad_file(tmp_path), "-o", "junit")
    assert rc == 1
    suite = ET.fromstring(out).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    failure = cases[0].find("failure")
    assert failure is not None and "spec.port" in (failure.get("message") or "")
    assert cases[1].find("failure") is None
    assert "spec.tls.verify" in (cases[1].findtext("system-out") or "")


def test_github_output_annotates_lines(tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    f = _bad_file(tmp_path)
    rc, out = run(capfd, "-f", f, "-o", "github")
    lines = out.splitlines()
    assert rc == 1
    assert lines[0] == (f"::error file={f},line=6,col=9,title=ExternalSmtp/a::spec.port: "
                        "70000 is greater than the maximum of 65535")
    assert lines[1].startswith("::warning file=")


def test_github_output_escapes_workflow_command_syntax(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "a,b:c.yaml", "a: [\n")
    rc, out = run(capfd, "-f", f, "-o", "github")
    assert rc == 1
    assert "file=" + f.replace(":", "%3A").replace(",", "%2C") + ",line=" in out.splitlines()[0]


# --- exit codes, stdin --------------------------------------------------------------------


def test_missing_file_is_an_io_error_exit_2(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    bad = _bad_file(tmp_path)
    rc, report = run_json(capfd, "-f", str(tmp_path / "nope.yaml"), "-f", bad)
    assert rc == 2 and report["valid"] is False
    assert report["errors"][0]["message"].startswith("cannot read")
    assert any(e["path"] == "spec.port" for e in report["errors"])  # the rest still checked


def test_usage_error_exit_2(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert main(["validate", "-f", "x", "-o", "yaml"]) == 2
    capfd.readouterr()


def test_empty_directory_is_an_io_error(tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    rc, report = run_json(capfd, "-f", str(tmp_path / "d"))
    assert rc == 2 and "no *.yaml" in report["errors"][0]["message"]


def test_directory_recursion_skips_hidden_and_other_files(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "d/a.yaml", RELAY.replace("NAME", "a"))
    write(tmp_path, "d/sub/b.yml", RELAY.replace("NAME", "b"))
    write(tmp_path, "d/sub/c.json", json.dumps({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "c"}, "spec": {"host": "h", "port": 0, "authentication": "None"}}))
    write(tmp_path, "d/.git/x.yaml", "not: [valid")
    write(tmp_path, "d/README.md", "# not yaml: [")
    rc, report = run_json(capfd, "-f", str(tmp_path / "d"))
    assert rc == 1 and report["documents"] == 3
    [e] = [e for e in report["errors"] if e["severity"] == "error"]
    assert e["file"].endswith("c.json") and e["path"] == "spec.port" and e["line"] == 1


def test_stdin_with_multi_document_stream() -> None:
    stream = RELAY.replace("NAME", "a") + "---\n" + RELAY.replace("NAME", "b").replace(
        "port: 25", "port: -1")
    out = subprocess.run([sys.executable, "-m", "reconciler", "validate", "-f", "-", "-o",
                          "json"], input=stream, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["summary"]["documents"] == 2
    assert [(e["file"], e["name"], e["line"]) for e in report["diagnostics"]] == [
        ("<stdin>", "b", 15)]


# --- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json", "junit", "github"])
def test_pasted_secrets_never_appear_in_output(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], fmt: str) -> None:
    text = f"""{API}
kind: ExternalSmtp
metadata: {{name: a}}
spec:
  host: smtp.example.com
  port: 587
  startTLS: true
  authentication: UsernamePassword
  username: a@example.com
  password: {PASSWORD}
  passwordFrom: {PASSWORD}
  tls:
    caBundleFrom: {{env: "{PASSWORD}"}}
---
{API}
kind: OAuth2Provider
metadata: {{name: p}}
spec:
  grantType: ClientCredentials
  clientId: c
  clientSecret: {PASSWORD}
  clientSecretFrom: {{file: ["{PASSWORD}"], secretKeyRef: {{name: "{PASSWORD}", key: 7}}}}
  refreshTokenFrom: {{env: {PASSWORD}}}
  tokenEndpoint: https://t
"""
    rc, out = run(capfd, "-f", write(tmp_path, "leak.yaml", text), "-o", fmt)
    assert rc == 1
    assert "literal secrets are not allowed" in out
    assert_no_canary(out)


# --- start-up budget ------------------------------------------------------------------


def test_validate_does_not_import_heavy_stacks(tmp_path: Path) -> None:
    f = write(tmp_path, "r.yaml", RELAY.replace("NAME", "a"))
    code = (
        "import sys\n"
        "from reconciler.cli.main import main\n"
        f"rc = main(['validate', '-f', {f!r}, '-o', 'json'])\n"
        "heavy = {'aiosmtplib', 'aiosmtpd', 'authlib', 'httpx', 'kubernetes', 'kopf', "
        "'pydantic', 'jsonschema', 'rich', 'prometheus_client', 'reconciler.resources', "
        "'reconciler.probe', 'reconciler.credentials', 'reconciler.engine'}\n"
        "loaded = sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy)\n"
        "print('LOADED', loaded, rc, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert "LOADED [] 0" in out.stderr, out.stderr


def test_positional_paths_work_like_f_for_pre_commit(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "a.yaml", RELAY.replace("NAME", "a"))
    bad = _bad_file(tmp_path)
    rc, report = run_json(capfd, good, bad)
    assert rc == 1 and report["documents"] == 3


def test_pre_commit_hook_definition_runs_validate() -> None:
    import yaml

    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "smtpctl-validate" and hook["entry"] == "smtpctl validate"
    assert hook["language"] == "python"


def test_max_bytes_bounds_what_is_read(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "big.yaml", RELAY.replace("NAME", "a") * 50)
    rc, report = run_json(capfd, "-f", f, "--max-bytes", "1000")
    assert rc == 1
    [e] = report["errors"]
    assert "larger than the limit of 1000 bytes" in e["message"] and e["line"] == 0
    rc, report = run_json(capfd, "-f", f, "--max-bytes", "100000")
    assert rc == 1 and "larger" not in json.dumps(report)  # read whole: duplicate names etc.


def test_unreadable_file_is_an_io_error(tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "adir.yaml"
    d.mkdir()
    (d / "x.txt").write_text("x")
    rc, report = run_json(capfd, "-f", str(d))
    assert rc == 2 and report["errors"][0]["line"] == 0


def invalid_examples_section() -> str:
    """The docs/validate.md section for the invalid examples, as validate prints it now."""
    from reconciler.schema.report import render_text
    from reconciler.schema.validate import validate_paths

    parts = []
    for path in INVALID:
        mistake = next(line for line in path.read_text().splitlines()
                       if line.startswith("# Mistake: ")).removeprefix("# Mistake: ")
        out = render_text(validate_paths([str(path)])).replace(f"{path.parent}/", "")
        parts.append(f"### `{path.name}`\n\n{mistake}\n\n```\n{out}```\n")
    return "\n".join(parts)


def test_docs_show_current_output_for_every_invalid_example() -> None:
    doc = (ROOT / "docs" / "validate.md").read_text()
    assert invalid_examples_section() in doc, (
        "docs/validate.md is stale: regenerate the section with "
        "`.venv/bin/python -m tests.test_validate_cli`")


if __name__ == "__main__":  # regenerate the docs section
    print(invalid_examples_section())


def test_typed_api_lists_are_expanded(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    items = [json.loads(json.dumps({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": n}, "spec": {"host": "h", "port": p, "authentication": "None",
                                          "from": "a@example.com"}})) for n, p in (("a", 25),
                                                                                  ("b", 0))]
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtpList",
           "metadata": {}, "items": items}
    rc, report = run_json(capfd, "-f", write(tmp_path, "l.json", json.dumps(doc, indent=1)))
    assert rc == 1 and report["documents"] == 2
    assert [e["path"] for e in report["errors"]] == ["items[1].spec.port"]
