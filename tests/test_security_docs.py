"""docs/security.md and docs/credentials.md agree with the code (drift checks).

* every test the guarantees name exists, and every test of ``tests/test_security_*.py`` is
  named in docs/security.md (a new security test gets its line in the index);
* every option the trust tables name exists on the command they name it for, and every
  ``SMTPCTL_ALLOW_*`` variable is the one the CLI reads;
* every catalogued reason the pages name exists in the catalog.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from reconciler import catalog
from reconciler.cli import trust
from reconciler.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
SECURITY = (ROOT / "docs" / "security.md").read_text()
CREDENTIALS = (ROOT / "docs" / "credentials.md").read_text()
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name.startswith("test_")}


def test_every_named_test_exists() -> None:
    refs = TEST_REF.findall(SECURITY) + TEST_REF.findall(CREDENTIALS)
    assert len(refs) > 40
    missing = [f"{f}::{t}" for f, t in refs
               if not (ROOT / f).is_file() or t not in _tests_in(ROOT / f)]
    assert not missing, f"docs name tests that do not exist: {missing}"


def test_every_security_test_is_in_the_index() -> None:
    named = {(f, t) for f, t in TEST_REF.findall(SECURITY)}
    absent = [f"{p.relative_to(ROOT)}::{t}" for p in sorted((ROOT / "tests").glob(
        "test_security_*.py")) if p.name != "test_security_docs.py"
        for t in sorted(_tests_in(p)) if (str(p.relative_to(ROOT)), t) not in named]
    assert not absent, f"security tests missing from docs/security.md: {absent}"


def _options(*command: str) -> set[str]:
    parser = build_parser(command[0])
    for name in command[1:]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {o for a in parser._actions for o in a.option_strings}


def test_the_options_the_pages_name_exist() -> None:
    cli = ("--allow-env", "--allow-file-root", "--allow-namespace")
    egress = ("--allow-egress", "--deny-egress")
    for command in (("test",), ("plan",), ("apply",), ("reconcile",), ("oauth", "login")):
        assert set(cli) <= _options(*command), command
    for command in (("test",), ("apply",), ("reconcile",)):
        assert set(egress) <= _options(*command), command
    operator = ("--allow-env-secret", "--allow-file-secret-dir", "--allow-loopback", *egress)
    assert set(operator) <= _options("operator")
    for page in (SECURITY, CREDENTIALS):
        for opt in (*cli, *operator):
            assert f"`{opt}" in page, (opt, "not documented")
    for var in (trust.ENV_ALLOW_ENV, trust.ENV_ALLOW_FILE_ROOT, trust.ENV_ALLOW_NAMESPACE):
        assert var in SECURITY and var in CREDENTIALS
    named = set(re.findall(r"SMTPCTL_ALLOW_[A-Z_]+", SECURITY + CREDENTIALS))
    assert named == {trust.ENV_ALLOW_ENV, trust.ENV_ALLOW_FILE_ROOT, trust.ENV_ALLOW_NAMESPACE}


# Backticked CamelCase words of the pages that are not reasons: types, grants, kinds.
NOT_REASONS = {"AuthorizationCode", "ClientCredentials", "RefreshToken", "UsernamePassword",
               "ExternalSmtp", "OAuth2Provider", "EnvSource", "FileSource", "KubeSecretSource",
               "GuardedTransport", "SourcePolicy", "SourceRouter", "TokenManager",
               "StrictModes"}


def test_the_reasons_the_pages_name_are_catalogued() -> None:
    words = set(re.findall(r"`([A-Z][a-z]*[A-Z0-9][A-Za-z0-9]+)`", SECURITY + CREDENTIALS))
    reasons = {w for w in words - NOT_REASONS if any(ch.islower() for ch in w)}
    assert len(reasons) > 15
    unknown = sorted(r for r in reasons if r not in catalog.CATALOG)
    assert not unknown, f"docs name reasons the catalog does not have: {unknown}"
