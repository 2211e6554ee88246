"""Every command, enumerated from the parser, against the conventions of docs/cli.md.

Static checks walk ``reconciler.cli.main.COMMANDS`` (a new command is checked without
touching this file); the behavioural checks run the manifest-reading and store commands
end to end against a real loopback relay and validate every ``-o json`` output against
``schemas/cli-result.v1.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.cli import common, docgen, names
from reconciler.cli.main import COMMANDS, build_parser, main
from tests.support import canary
from tests.support.engine_env import Env, e2e_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "cli-result.v1.json").read_text())
MANIFEST_COMMANDS = ("validate", "plan", "apply", "test")
NOT_MANIFESTS = {"import"}  # -f reads JavaMail/Spring properties, not manifests
"""Commands whose main input is -f (delete -f and oauth are checked separately)."""


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for name in COMMANDS:
        parser = build_parser(name)
        subs = docgen.subparsers(parser)
        out.update({f"{name} {s}": p for s, p in subs.items()} if subs else {name: parser})
    return out


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def reference(add: Any, **kwargs: Any) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add(p, **kwargs)
    return p


SHARED = ("nargs", "help", "metavar", "default", "dest", "option_strings")


def same(a: argparse.Action, b: argparse.Action) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in SHARED) and type(a) is type(b)


# --- static: every command, from the parser ---------------------------------------------


def test_docs_are_generated_from_the_parsers_and_cover_every_command() -> None:
    assert docgen.main(["--check"]) == 0, "docs/cli.md is stale: python -m reconciler.cli.docgen"
    blocks = docgen.blocks(docgen.DOC.read_text())
    assert {f"usage:{c}" for c in COMMANDS} <= set(blocks)
    assert {"names", "exit-codes", "outputs"} <= set(blocks)


def test_every_command_has_help_and_exits_0_on_it(capfd: pytest.CaptureFixture[str]) -> None:
    for name, parser in all_parsers().items():
        assert parser.description, name
        assert main([*name.split(), "--help"]) == 0, name
        assert "usage: smtpctl" in capfd.readouterr().out
    assert main(["no-such-command"]) == 2


def test_shared_options_are_defined_once() -> None:
    """-f/--allow-status, -n/-A, --state and -o come from reconciler.cli.common: same
    names, help, defaults and metavar wherever they appear."""
    files = reference(common.add_input_options)
    ns_lookup = reference(common.add_namespace_options)
    ns_manifest = reference(common.add_namespace_options, manifests=True)
    state = reference(common.add_store_options)
    seen_f = []
    for name, parser in all_parsers().items():
        f = option(parser, "-f")
        if f is not None:
            seen_f.append(name)
            ref = option(files, "-f")
            assert ref is not None
            assert all(getattr(f, k) == getattr(ref, k) for k in SHARED if k != "default"), name
            assert f.nargs == "+" and isinstance(f, argparse._ExtendAction), name
            if name in NOT_MANIFESTS:
                continue
            # every manifest reader takes --allow-status (and the trust flags with it)
            allow, ref_allow = option(parser, "--allow-status"), option(files, "--allow-status")
            assert allow is not None and ref_allow is not None and same(allow, ref_allow), name
        n = option(parser, "-n")
        if n is not None and not name.startswith("operator"):
            refs = [option(ns_lookup, "-n"), option(ns_manifest, "-n")]
            assert any(r is not None and same(n, r) for r in refs), name
        a = option(parser, "-A")
        if a is not None and not name.startswith("operator"):
            assert same(a, option(ns_lookup, "-A")), name  # type: ignore[arg-type]
        s = option(parser, "--state")
        if s is not None:
            assert same(s, option(state, "--state")), name  # type: ignore[arg-type]
    assert set(MANIFEST_COMMANDS) <= set(seen_f)
    assert {"delete", "oauth login", "oauth token", "oauth revoke"} <= set(seen_f)


def test_every_result_command_has_json_and_yaml_with_text_default() -> None:
    no_output = {"operator", "demo", "oauth login"}  # a daemon, a story, a browser dance
    for name, parser in all_parsers().items():
        fmts = docgen.output_formats(parser)
        if name in no_output:
            continue
        assert fmts is not None, f"{name} has no -o"
        assert fmts[0] == "text" and {"json", "yaml"} <= set(fmts), (name, fmts)
    for name in ("validate", "test"):
        assert {"junit", "github"} <= set(docgen.output_formats(build_parser(name)) or ())


def test_resource_names_are_the_crds() -> None:
    crds = {}
    for path in (ROOT / "manifests" / "crds").glob("*.smtp.reconciler.dev.yaml"):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc["spec"]["names"]
    assert set(crds) == set(names.BY_KIND)
    for r in names.RESOURCES:
        n = crds[r.kind]
        assert (n["plural"], n["singular"], n["shortNames"], n["categories"]) == (
            r.plural, r.singular, list(r.short_names), list(r.categories))
        for word in (n["plural"], n["singular"], *n["shortNames"], r.kind,
                     f"{n['plural']}.smtp.reconciler.dev"):
            assert names.kinds_of(word) == [r.kind], word
    assert names.kinds_of("smtp") == names.kinds_of("all") == [r.kind for r in names.RESOURCES]
    for gone in ("es", "o2p", "provider"):  # the aliases the CRDs never had
        with pytest.raises(names.NameError_):
            names.kinds_of(gone)


def test_target_syntax() -> None:
    t = names.parse_targets(["esmtp/a", "oauth2p/b"])
    assert [(x.kinds, x.name) for x in t] == [(("ExternalSmtp",), "a"),
                                              (("OAuth2Provider",), "b")]
    assert [x.name for x in names.parse_targets(["externalsmtps", "a", "b"])] == ["a", "b"]
    assert names.parse_targets(["esmtp,oauth2p"])[0].kinds == ("ExternalSmtp",
                                                               "OAuth2Provider")
    with pytest.raises(names.NameError_):
        names.parse_targets(["esmtp/a", "b"])


def test_result_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_durations_have_one_format() -> None:
    from reconciler.resources import format_duration, parse_duration

    cases = {0.0042: "4.2ms", 0.35: "350ms", 1.349: "1.35s", 42.4: "42s", 330: "5m30s",
             3423: "57m", 3600: "1h", 3960: "1h6m", 20520: "5h42m", 93600: "26h"}
    for seconds, text in cases.items():
        assert format_duration(seconds) == text
        assert abs(parse_duration(text).total_seconds() - seconds) <= max(30, seconds * 0.01)


# --- behaviour ------------------------------------------------------------------------------


def run(env: Env, *args: str, stdin: str | None = None, state: bool = True
        ) -> tuple[int, str, str]:
    argv = [*args, *(["--state", str(env.state)] if state else [])]
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        sys.stdin = old_stdin
    canary.assert_no_canary(out.getvalue(), err.getvalue(), where=f"smtpctl {args}")
    return code, out.getvalue(), err.getvalue()


def envelope(env: Env, *args: str, stdin: str | None = None, state: bool = True,
             fmt: str = "json") -> tuple[int, dict[str, Any]]:
    code, out, err = run(env, *args, "-o", fmt, stdin=stdin, state=state)
    data = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    jsonschema.validate(data, SCHEMA)
    assert data["exitCode"] == code and data["ok"] == (code == 0), (args, err)
    return code, data


def _state_arg(command: str) -> bool:
    return command not in ("validate", "test")


def test_f_takes_directories_several_paths_globs_and_stdin(e2e: Env) -> None:
    d = e2e.root / "m"
    d.mkdir()
    a = e2e.write("m/a.yaml", e2e.smtp("a", selected=True))
    b = e2e.write("m/b.yml", e2e.smtp("b"))
    (d / ".hidden.yaml").write_text("not: [yaml")  # hidden entries are skipped
    forms: list[tuple[list[str], str | None]] = [
        (["-f", str(d)], None),
        (["-f", str(a), str(b)], None),          # what the shell makes of -f m/*
        (["-f", str(a), "-f", str(b)], None),
        (["-f", str(d / "*.y*ml")], None),        # a glob the shell did not expand
        (["-f", str(e2e.root / "**" / "?.yaml"), str(b)], None),
        (["-f", "-"], yaml.safe_dump_all([e2e.smtp("a", selected=True), e2e.smtp("b")])),
    ]
    for command in MANIFEST_COMMANDS:
        for argv, stdin in forms:
            code, data = envelope(e2e, command, *argv, stdin=stdin,
                                  state=_state_arg(command))
            names_seen = sorted(i["name"] for i in data["items"] if i["kind"])
            assert names_seen == ["a", "b"], (command, argv, data["diagnostics"])
            assert code in (0, 3), (command, argv, data)
    code, data = envelope(e2e, "plan", "-f", str(e2e.root / "nothing-*.yaml"))
    assert code == 2 and "no files match" in data["diagnostics"][0]["message"]


def test_every_manifest_command_reports_errors_in_the_envelope(e2e: Env) -> None:
    bad = e2e.smtp("bad")
    bad["spec"]["port"] = 70000
    f = e2e.write("bad.yaml", bad)
    for command in (*MANIFEST_COMMANDS, "delete"):
        code, data = envelope(e2e, command, "-f", str(f), state=_state_arg(command))
        assert code == 1, command  # invalid input: 1 for every command
        [d] = [d for d in data["diagnostics"] if d.get("path") == "spec.port"]
        line = 1 + f.read_text().splitlines().index("  port: 70000")
        assert (d["file"], d["severity"], d["line"]) == (str(f), "error", line), command
        code, data = envelope(e2e, command, "-f", str(e2e.root / "missing.yaml"),
                              state=_state_arg(command))
        assert code == 2 and data["diagnostics"][0]["severity"] == "error", command
    assert not e2e.state.exists()  # nothing was written by any of them


def test_other_kinds_and_status_are_treated_alike(e2e: Env) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    f = e2e.write("mixed.yaml", e2e.smtp("a"), deployment)
    for command in MANIFEST_COMMANDS:
        code, data = envelope(e2e, command, "-f", str(f), state=_state_arg(command))
        assert code in (0, 3) and data["summary"]["skipped"] == 1, (command, data)
    with_status = {**e2e.smtp("s"), "status": {"selected": True}}
    g = e2e.write("status.yaml", with_status)
    for command in MANIFEST_COMMANDS:
        code, data = envelope(e2e, command, "-f", str(g), state=_state_arg(command))
        assert code == 1 and data["diagnostics"][0]["path"] == "status", command
        code, data = envelope(e2e, command, "-f", str(g), "--allow-status",
                              state=_state_arg(command))
        assert code in (0, 3), (command, data)
    # --allow-status accepted it and dropped it: the status is the reconciler's
    assert e2e.status("s").get("selected") is False


def test_every_store_command_prints_a_valid_envelope(e2e: Env) -> None:
    f = e2e.write("ab.yaml", e2e.smtp("a", selected=True), e2e.smtp("b"), e2e.provider())
    code, data = envelope(e2e, "apply", "-f", str(f))
    assert code == 0 and data["summary"]["create"] == 3
    assert any(e["reason"] == "Active" for e in data["events"])
    assert all("action" not in i for i in data["items"])  # Ready: nothing to do
    for args in (["reconcile"], ["describe", "esmtp", "a"], ["describe", "esmtp/a",
                                                              "oauth2p/idp"],
                 ["delete", "esmtp", "b"], ["plan", "-f", str(f)]):
        for fmt in ("json", "yaml"):
            code, data = envelope(e2e, *args, fmt=fmt)
            assert data["command"] == args[0]
            if args[0] == "delete":
                break
    code, data = envelope(e2e, "delete", "esmtp", "b")  # already deleted
    assert code == 1 and data["items"] == [] and "not found" in data["diagnostics"][0][
        "message"]


def test_plan_and_dry_run_agree(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a"))
    for expect in (3, 0):
        code_p, plan = envelope(e2e, "plan", "-f", str(f))
        code_d, dry = envelope(e2e, "apply", "--dry-run", "-f", str(f))
        assert code_p == code_d == expect
        assert plan["items"] == dry["items"] and plan["events"] == dry["events"]
        if expect == 3:
            assert run(e2e, "apply", "-f", str(f))[0] == 0


def test_apply_unchanged_with_a_relay_down_exits_0_unless_required(
        e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    good = e2e.smtp("a", selected=True)
    f = e2e.write("a.yaml", good)
    assert run(e2e, "apply", "-f", str(f))[0] == 0
    # the secret rotates but the relay does not know the new one: the re-test fails
    monkeypatch.setenv("SMTP_PW", canary.canary("rotated"))
    code, data = envelope(e2e, "reconcile")
    assert code == 1  # reconcile ran a test that failed
    code, out, err = run(e2e, "apply", "-f", str(f))
    assert code == 0, out + err  # nothing changed: the down relay does not fail the apply
    assert "AuthenticationFailed" in out and "--require-ready" in err
    code, data = envelope(e2e, "apply", "-f", str(f), "--require-ready")
    assert code == 1 and data["summary"]["notReady"] == 1
    # a change that is not Ready does fail it
    code, data = envelope(e2e, "apply", "-f", str(e2e.write("a.yaml", {
        **good, "spec": {**good["spec"], "refreshInterval": "2h"}})))
    [item] = data["items"]
    assert code == 1 and item["operation"] == "update" and item["ready"] == "False"
    assert item["action"] and item["retryable"] is False


def test_namespace_rule_is_the_same_for_every_command(e2e: Env) -> None:
    f = e2e.write("ns.yaml", e2e.smtp("solo", namespace="mail"), e2e.smtp("twin", namespace="x"),
                  e2e.smtp("twin", namespace="y"))
    assert run(e2e, "apply", "-f", str(f))[0] == 0
    for command in (["get", "esmtp"], ["describe", "esmtp"]):
        code, out, _ = run(e2e, *command, "solo")  # exactly one namespace holds it
        assert code == 0 and "solo" in out, command
        code, _, err = run(e2e, *command, "twin")
        assert code == 1 and "exists in namespaces x, y" in err, command
        code, _, err = run(e2e, *command, "solo", "-n", "default")
        assert code == 1 and "it exists in namespace mail (use -n mail)" in err, command
        code, out, _ = run(e2e, *command, "twin", "-n", "y")
        assert code == 0 and "twin" in out, command
    code, _, err = run(e2e, "delete", "esmtp", "twin")
    assert code == 1 and "exists in namespaces x, y" in err
    code, out, _ = run(e2e, "delete", "esmtp/solo")
    assert code == 0 and "deleted" in out
    # get active: nothing selected in -n default, but one is in mail
    f2 = e2e.write("sel.yaml", e2e.smtp("solo", namespace="mail", selected=True))
    assert run(e2e, "apply", "-f", str(f2))[0] == 0
    code, _, err = run(e2e, "get", "active", "-n", "default")
    assert code == 1 and "one is selected in namespace mail (use -n mail)" in err
    code, out, _ = run(e2e, "get", "active", "-o", "yaml")  # the only one: found
    assert code == 0 and yaml.safe_load(out)["relay"] == {"namespace": "mail", "name": "solo"}
    # manifests: -n fills in a missing namespace and refuses a different one
    g = e2e.write("plain.yaml", e2e.smtp("p"))
    doc = yaml.safe_load(g.read_text())
    del doc["metadata"]["namespace"]
    g.write_text(yaml.safe_dump(doc))
    code, data = envelope(e2e, "plan", "-f", str(g), "-n", "team")
    assert code == 3 and data["items"][0]["namespace"] == "team"
    code, data = envelope(e2e, "plan", "-f", str(f), "-n", "team")
    assert code == 1 and "does not match -n team" in data["diagnostics"][0]["message"]


def test_delete_of_a_missing_object_agrees_across_forms(e2e: Env) -> None:
    e2e.state.mkdir()
    f = e2e.write("gone.yaml", e2e.smtp("gone"))
    assert run(e2e, "apply", "-f", str(e2e.write("x.yaml", e2e.smtp("x"))))[0] == 0
    assert run(e2e, "delete", "esmtp", "gone")[0] == 1
    assert run(e2e, "delete", "-f", str(f))[0] == 1  # it exited 0 before
    assert run(e2e, "delete", "esmtp", "gone", "--ignore-not-found")[0] == 0
    assert run(e2e, "delete", "-f", str(f), "--ignore-not-found")[0] == 0


def test_get_and_apply_sort_rows_the_same_way(e2e: Env) -> None:
    f = e2e.write("s.yaml", e2e.smtp("z"), e2e.provider("p"), e2e.smtp("a", namespace="b"),
                  e2e.smtp("m"))
    _, applied = envelope(e2e, "apply", "-f", str(f))
    _code, out, _ = run(e2e, "get", "-o", "name")
    order = [(i["kind"], i["name"]) for i in applied["items"]]
    assert order == [("ExternalSmtp", "a"), ("ExternalSmtp", "m"), ("ExternalSmtp", "z"),
                     ("OAuth2Provider", "p")]
    assert out.split() == [f"{names.display_kind(k)}/{n}" for k, n in order]
    _, table, _ = run(e2e, "get")
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows == ["b/a", "default/m", "default/z", "default/p"]


def test_a_mistyped_state_directory_is_not_silent(e2e: Env) -> None:
    f = e2e.write("a.yaml", e2e.smtp("a"))
    assert run(e2e, "apply", "-f", str(f))[0] == 0
    typo = str(e2e.root / "stat")
    code, _out, err = run(e2e, "plan", "-f", str(f), "--state", typo, state=False)
    assert code == 3 and "does not exist" in err and "(from --state)" in err
    for args in (["get"], ["describe", "esmtp", "a"], ["delete", "esmtp", "a"],
                 ["reconcile"]):
        code, _, err = run(e2e, *args, "--state", typo, state=False)
        assert code == 2 and "does not exist" in err, args
    assert not Path(typo).exists()


def test_tables_fit_80_columns_without_cutting_words(e2e: Env, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    from reconciler.cli.cmd_describe import render
    from reconciler.cli.localcmd import HEADER, print_table, row
    from reconciler.stores.local import LocalStore

    long_name = "a-relay-with-a-rather-long-name-for-a-table"
    f = e2e.write("l.yaml", e2e.smtp(long_name, user="nobody@example.test"), e2e.provider())
    run(e2e, "apply", "-f", str(f))

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")
    out = Tty()
    with LocalStore(e2e.state, create=False) as store:
        objs = store.list_sync()
        print_table(HEADER, [row(o) for o in objs], out)
        import re

        lines = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines()
        assert all(len(line) <= 80 for line in lines), lines
        assert any(f"default/{long_name}" in line for line in lines)  # NAME is never cut
        assert not any("http://" in line for line in lines)  # token URLs show their host
        relay = next(o for o in objs if o.ref.name == long_name)
        text = render(relay, store.tests_sync(relay.ref), store.events_sync(relay.ref),
                      width=80)
    for line in text.splitlines():
        assert len(line) <= 80 or " " not in line.strip(), line


def test_documented_commands_parse() -> None:
    """Every `smtpctl ...` line in the README and docs/cli.md names a real command with
    options its parser accepts (the docs cannot drift from the flags)."""
    import re
    import shlex

    seen = 0
    for doc in (ROOT / "README.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "validate.md"):
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                for part in re.split(r"\s*(?:;|&&|\||&)\s*", line.split("  #")[0].strip()):
                    words = shlex.split(part, comments=True) if part else []
                    if not words or words[0] != "smtpctl":
                        continue
                    kept, skip = [], False
                    for w in words[1:]:  # drop shell redirections (`> relay.yaml`)
                        if skip:
                            skip = False
                        elif w in (">", ">>", "<", "2>"):
                            skip = True
                        elif not w.startswith((">", "<")):
                            kept.append(w)
                    words = kept
                    if not words or words[0] in ("--help", "--version"):
                        continue
                    name, rest = words[0], words[1:]
                    assert name in COMMANDS, f"{doc.name}: {line}"
                    parser = build_parser(name)
                    try:
                        parser.parse_args(rest)
                    except SystemExit as exc:
                        raise AssertionError(f"{doc.name}: `{line}` does not parse") from exc
                    seen += 1
    assert seen >= 15
