"""Renderings of a validate :class:`~reconciler.schema.validate.Report`.

* ``text`` - ``file:line:col: severity: path: message [Kind/name]`` (the compiler format
  editors and terminals link), then a summary line;
* ``json``/``yaml`` - the CLI's result envelope, built by ``smtpctl validate`` itself
  (``reconciler/cli/cmd_validate.py``) from :func:`summary` and the diagnostics;
* ``junit`` - one ``<testcase>`` per validated document, a ``<failure>`` per error (warnings
  go to ``<system-out>``), a ``<skipped/>`` case per document of another kind, so CI test
  report UIs list each manifest and count what the text summary counts;
* ``github`` - workflow commands (``::error file=...,line=...,col=...::``) that GitHub
  Actions turns into annotations on the pull request diff.
"""

from __future__ import annotations

from reconciler.schema.diagnostics import Diagnostic
from reconciler.schema.validate import Report

FORMATS = ("text", "json", "yaml", "junit", "github")


def render(report: Report, fmt: str) -> str:
    """text, junit or github (json/yaml are the CLI's envelope)."""
    return {"text": render_text, "junit": render_junit, "github": render_github}[fmt](report)


def summary(report: Report) -> dict[str, object]:
    errors, warnings = report.counts()
    return {"valid": report.valid, "files": report.files, "documents": report.documents,
            "skipped": report.skipped, "errors": errors, "warnings": warnings}


def _where(d: Diagnostic) -> str:
    return f"{d.file}:{d.line}:{d.column}" if d.line else d.file


def _subject(d: Diagnostic) -> str:
    if d.kind and d.name:
        return f" [{d.kind}/{d.name}]"
    return f" [{d.kind}]" if d.kind else ""


def render_text(report: Report) -> str:
    lines = []
    for d in report.diagnostics:
        path = f"{d.path}: " if d.path else ""
        lines.append(f"{_where(d)}: {d.severity}: {path}{d.message}{_subject(d)}")
    errors, warnings = report.counts()
    verdict = "valid" if report.valid else "INVALID"
    lines.append(f"{verdict}: {report.documents} document(s) checked, {report.skipped} "
                 f"skipped (other kinds), {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


def render_junit(report: Report) -> str:
    cases: list[str] = []
    failures = 0
    # File-level problems (unreadable, syntax errors before any document) get a case each.
    per_doc = {id(d) for r in report.results for d in r.diagnostics}
    loose = [d for d in report.diagnostics if id(d) not in per_doc]
    for d in loose:
        failures += d.severity == "error"
        cases.append(_case(d.file, d.file, [d]))
    for r in report.results:
        label = f"{r.kind or 'document'}/{r.name or r.index}"
        errs = [d for d in r.diagnostics if d.severity == "error"]
        failures += bool(errs)
        cases.append(_case(r.file, f"{r.file}#{r.index} {label}", r.diagnostics))
    for r in report.skipped_documents:
        label = f"{r.kind or 'document'}/{r.name or r.index}"
        cases.append(f"    <testcase classname={quoteattr(r.file)} "
                     f"name={quoteattr(f'{r.file}#{r.index} {label}')}>\n"
                     f"      <skipped message=\"not an ExternalSmtp or OAuth2Provider\"/>\n"
                     "    </testcase>\n")
    total = len(cases)
    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
            f'  <testsuite name="smtpctl validate" tests="{total}" failures="{failures}" '
            f'errors="0" skipped="{len(report.skipped_documents)}">\n')
    return head + "".join(cases) + "  </testsuite>\n</testsuites>\n"


def escape(text: str) -> str:
    """XML text escaping (``xml.sax.saxutils`` would import urllib/http/email: +25 ms)."""
    text = "".join(c for c in text if c in "\t\n\r" or c >= " ")  # XML 1.0 forbids the rest
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    return '"' + escape(text).replace('"', "&quot;").replace("\n", "&#10;") + '"'


def _case(classname: str, name: str, diags: list[Diagnostic]) -> str:
    out = f"    <testcase classname={quoteattr(classname)} name={quoteattr(name)}>\n"
    errors = [d for d in diags if d.severity == "error"]
    warnings = [d for d in diags if d.severity == "warning"]
    if errors:
        first = errors[0]
        body = "\n".join(_line(d) for d in errors)
        out += (f"      <failure message={quoteattr(_line(first))} type=\"invalid\">"
                f"{escape(body)}</failure>\n")
    if warnings:
        text = escape("\n".join(_line(d) for d in warnings))
        out += f"      <system-out>{text}</system-out>\n"
    return out + "    </testcase>\n"


def _line(d: Diagnostic) -> str:
    path = f"{d.path}: " if d.path else ""
    return f"{_where(d)}: {d.severity}: {path}{d.message}"


def _gh_escape(value: str, *, prop: bool) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def render_github(report: Report) -> str:
    lines = []
    for d in report.diagnostics:
        level = "error" if d.severity == "error" else "warning"
        props = [f"file={_gh_escape(d.file, prop=True)}"]
        if d.line:
            props += [f"line={d.line}", f"col={d.column}"]
        title = f"{d.kind}/{d.name}" if d.kind and d.name else "smtpctl validate"
        props.append(f"title={_gh_escape(title, prop=True)}")
        path = f"{d.path}: " if d.path else ""
        lines.append(f"::{level} {','.join(props)}::{_gh_escape(path + d.message, prop=False)}")
    errors, warnings = report.counts()
    lines.append(f"smtpctl validate: {report.documents} document(s), {report.skipped} skipped, "
                 f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"
