"""Hostile and broken YAML: always a diagnostic with a location, never a traceback, and
bounded work (alias bombs, recursion, deep nesting, huge files)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.schema.validate import Options, Report, validate_bytes

API = "apiVersion: smtp.reconciler.dev/v1alpha1"
RELAY = f"""{API}
kind: ExternalSmtp
metadata: {{name: a}}
spec:
  host: relay.example.com
  port: 25
  authentication: None
  from: a@example.com
"""


def check(raw: bytes | str, name: str = "in.yaml", **opts: Any) -> Report:
    data = raw.encode() if isinstance(raw, str) else raw
    return validate_bytes(name, data, Options(**opts))


def only_error(report: Report) -> Any:
    errors = [d for d in report.diagnostics if d.severity == "error"]
    assert len(errors) == 1, errors
    return errors[0]


def test_valid_relay_has_no_diagnostics() -> None:
    r = check(RELAY)
    assert (r.valid, r.documents, r.diagnostics) == (True, 1, [])


def test_empty_file_and_comment_only_documents_are_fine() -> None:
    for text in ("", "# nothing\n", "---\n---\n", RELAY + "---\n# trailing\n"):
        r = check(text)
        assert r.valid and r.diagnostics == [], text


def test_syntax_error_has_position_and_earlier_documents_are_still_checked() -> None:
    r = check(RELAY.replace("port: 25", "port: 0") + "---\nkind: [unclosed\n")
    messages = [(d.line, d.path, d.message) for d in r.diagnostics]
    assert messages[0][:2] == (6, "spec.port")
    assert messages[1][0] == 11 and messages[1][2].startswith("YAML syntax error")
    assert "checking of this file stopped here" in messages[1][2]


def test_tab_indentation_gets_a_hint() -> None:
    e = only_error(check(RELAY.replace("  port: 25", "\tport: 25")))
    assert "tabs are not allowed for indentation" in e.message and e.line == 6


def test_duplicate_keys_are_errors_with_their_path() -> None:
    r = check(RELAY + "  tls:\n    verify: true\n    verify: false\n")
    e = only_error(r)
    assert (e.line, e.column, e.path) == (11, 5, "spec.tls.verify")
    assert "duplicate key 'verify'" in e.message and e.name == "a"


def test_duplicate_keys_in_a_skipped_kind_are_still_reported() -> None:
    e = only_error(check("apiVersion: v1\nkind: ConfigMap\nkind: Secret\n"))
    assert e.line == 3 and "duplicate key 'kind'" in e.message


def test_duplicate_keys_in_json() -> None:
    e = only_error(check('{"apiVersion": "x", "apiVersion": "y"}', name="a.json"))
    assert "duplicate key 'apiVersion'" in e.message


def test_merge_keys_are_not_duplicates() -> None:
    base = "x-base: &b {host: relay.example.com, port: 25}\nspec:\n  <<: *b\n"
    text = RELAY.replace("spec:\n", base, 1).replace("  host: relay.example.com\n  port: 25\n", "")
    r = check(text)
    # the merged mapping is valid content; x-base is an unknown top-level field
    assert [d.path for d in r.diagnostics] == ["x-base"]


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    e = only_error(check("\n".join(lines) + "\n"))
    assert "alias bomb" in e.message


def test_recursive_alias_is_refused() -> None:
    e = only_error(check(RELAY + "  tls: &t {x: *t}\n"))
    assert "recursive alias" in e.message


def test_moderate_anchors_are_fine() -> None:
    text = RELAY.replace("metadata: {name: a}", "metadata: &m {name: a}") + "---\n" + \
        RELAY.replace("metadata: {name: a}", "metadata: {name: b, labels: {x: y}}")
    assert check(text).valid


def test_deep_nesting_is_a_diagnostic() -> None:
    for depth in (200, 990, 5000):
        r = check(RELAY + "  tls: " + "[" * depth + "]" * depth + "\n")
        assert not r.valid and r.diagnostics, depth
        assert all(d.line >= 0 for d in r.diagnostics)


def test_huge_file_is_refused_before_parsing() -> None:
    e = only_error(check(RELAY * 100, max_bytes=1000))
    assert "larger than the limit of 1000 bytes" in e.message and e.line == 0


def test_not_utf8_is_reported_with_position() -> None:
    e = only_error(check(RELAY.encode().replace(b"relay.example", b"r\xe9lay.example")))
    assert "not valid UTF-8" in e.message and (e.line, e.column) == (5, 10)


def test_utf16_is_reported() -> None:
    e = only_error(check(RELAY.encode("utf-16")))
    assert "UTF-16" in e.message


def test_utf8_bom_is_accepted() -> None:
    assert check(b"\xef\xbb\xbf" + RELAY.encode()).valid


def test_control_characters_are_syntax_errors() -> None:
    e = only_error(check(RELAY.replace("relay.example.com", "relay\x00.example.com")))
    assert e.message.startswith("YAML syntax error") and e.line == 5


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_documents_that_are_not_mappings(text: str) -> None:
    r = check(RELAY + "---\n" + text)
    e = only_error(r)
    assert "not a mapping" in e.message and e.line == 10 and r.documents == 2


@pytest.mark.parametrize("value", ["!!binary aGVsbG8=", "!!set {a, b}", "!Ref other",
                                   "!!timestamp 2020-01-01"])
def test_tags_without_json_equivalent(value: str) -> None:
    e = only_error(check(RELAY.replace("relay.example.com", value)))
    assert "YAML tag not allowed" in e.message and e.line == 5


def test_non_string_keys_are_reported() -> None:
    e = only_error(check(RELAY + "  1: x\n"))
    assert "keys must be strings" in e.message and e.path == "spec"


def test_nan_port_is_a_type_error() -> None:
    e = only_error(check(RELAY.replace("port: 25", "port: .nan")))
    assert e.path == "spec.port"


def test_timestamps_stay_strings() -> None:
    r = check(RELAY.replace("from: a@example.com", "from: 2020-01-01"))
    assert r.valid  # a date-like sender is a (silly) string, not a datetime


def test_yaml_1_1_booleans_are_booleans() -> None:
    assert check(RELAY + "  startTLS: yes\n  allowPlaintextAuth: off\n").valid


def test_unknown_kind_in_our_group_and_missing_kind() -> None:
    e = only_error(check(RELAY.replace("kind: ExternalSmtp", "kind: SmtpRelay")))
    assert e.path == "kind" and "ExternalSmtp and OAuth2Provider" in e.message
    e = only_error(check(RELAY.replace("kind: ExternalSmtp\n", "")))
    assert e.path == "kind" and "missing" in e.message


def test_kind_without_api_version() -> None:
    e = only_error(check(RELAY.replace(API + "\n", "")))
    assert e.path == "" and "apiVersion" in e.message


def test_wrong_api_version() -> None:
    e = only_error(check(RELAY.replace("v1alpha1", "v1beta1")))
    assert e.path == "apiVersion" and "must be smtp.reconciler.dev/v1alpha1" in e.message


def test_json_syntax_error_has_position() -> None:
    e = only_error(check('{\n  "kind": "ExternalSmtp",\n  "spec": }\n', name="x.json"))
    assert e.message.startswith("JSON syntax error") and (e.line, e.column) == (3, 11)


def test_minversion_as_number_explains() -> None:
    e = only_error(check(RELAY + "  tls: {minVersion: 1.2}\n"))
    assert e.path == "spec.tls.minVersion" and "got a number (1.2)" in e.message


def test_warnings_do_not_fail_unless_strict() -> None:
    text = RELAY + "  tls: {verify: false}\n"
    assert check(text).valid
    r = check(text, strict=True)
    assert not r.valid and only_error(r).path == "spec.tls.verify"


TRICKY = """\
a: 0x1F
b: 0o17
c: 1_000
d: -1.5e3
e: -.5
f: [yes, No, on, OFF, true]
g: [~, null, ""]
h: &h {x: 1, y: [1, 2]}
i: *h
j: {<<: *h, y: 3}
k: "2020-01-01"
l: 2020-01-01T00:00:00Z
m: !!str 123
n: !!int "7"
o: |
  block
p: [[], {}]
q: {? simple : key}
r: 12:30
"""


@pytest.mark.parametrize("text", [TRICKY, RELAY, RELAY + "  tls: {verify: no}\n"])
def test_fast_constructor_matches_pyyaml(text: str) -> None:
    """The fast path (and its fallback for merge keys / explicit tags) gives exactly what
    PyYAML's own constructor gives with the same resolvers."""
    import yaml

    from reconciler.schema.loader import _Loader, load

    class Reference(_Loader):
        def construct_document(self, node: yaml.Node) -> Any:
            return yaml.constructor.BaseConstructor.construct_document(self, node)

    expected = list(yaml.load_all(text, Loader=Reference))
    got = [d.data for d in load("t.yaml", text.encode()).documents]
    assert got == expected
    assert isinstance(got[0], dict)


def test_fast_constructor_keeps_aliases_shared() -> None:
    from reconciler.schema.loader import load

    [doc] = list(load("t.yaml", b"a: &x [1]\nb: *x\n").documents)
    assert doc.data["a"] is doc.data["b"]


def test_a_mapping_with_many_unknown_keys_is_reported_boundedly() -> None:
    keys = "".join(f"  k{i}: {i}\n" for i in range(20000))
    r = check(RELAY + keys)
    assert not r.valid
    assert len(r.diagnostics) <= 60
    assert any(d.path == "spec.k0" and d.line == 9 for d in r.diagnostics)
    assert any("more problems in this document are not shown" in d.message
               for d in r.diagnostics)


def test_many_duplicate_keys_are_reported_boundedly() -> None:
    r = check(RELAY + "  port: 26\n" * 5000)
    assert not r.valid and len(r.diagnostics) <= 60


def test_diagnostics_per_file_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.schema import validate

    monkeypatch.setattr(validate, "MAX_PER_FILE", 10)
    r = check("[]\n---\n" * 1000)
    assert not r.valid and len(r.diagnostics) == 11
    assert "checking of this file stopped" in r.diagnostics[0].message  # line 0 sorts first
