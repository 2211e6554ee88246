"""The one machine-readable result of every command (``-o json`` / ``-o yaml``).

Every command that reports a result prints exactly one envelope on stdout, described by
``schemas/cli-result.v1.json`` (a test validates every command's output against it)::

    {"apiVersion": "cli.smtp.reconciler.dev/v1", "kind": "Result", "command": "apply",
     "ok": true, "exitCode": 0, "summary": {...},
     "items": [{"kind": "ExternalSmtp", "namespace": "default", "name": "gmail", ...}],
     "events": [...], "diagnostics": [...]}

* ``ok`` is ``exitCode == 0``; ``exitCode`` is the process's exit code (docs/cli.md);
* ``items`` are the resources the command worked on, each with ``kind``/``namespace``/
  ``name`` and the command's fields; ``operation`` is what happened to the object,
  ``action`` only ever the catalog's advice (what to do about ``reason``);
* ``events`` are what happened to the scope meanwhile (selection changes, failovers);
* ``diagnostics`` are problems with the input or the run (``severity`` error, warning or
  info, with ``file``/``line``/``column``/``path`` when they come from a manifest).

Once the arguments are parsed, ``-o json|yaml`` always prints an envelope, errors
included (an unreadable file is a diagnostic and exit code 2).  Only argparse's own usage
errors print usage text on stderr and nothing on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

API_VERSION = "cli.smtp.reconciler.dev/v1"
KIND = "Result"
STRUCTURED = ("json", "yaml")


class Result:
    """Collects a command's result; :meth:`emit` prints it in the chosen format."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.summary: dict[str, Any] = {}
        self.items: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.diagnostics: list[dict[str, Any]] = []

    def item(self, kind: str, namespace: str, name: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": kind, "namespace": namespace, "name": name}
        entry.update({k: v for k, v in fields.items() if v is not None})
        self.items.append(entry)
        return entry

    def diag(self, severity: str, message: str, **where: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"severity": severity, "message": message}
        entry.update({k: v for k, v in where.items() if v is not None})
        self.diagnostics.append(entry)
        return entry

    def error(self, message: str, **where: Any) -> None:
        self.diag("error", message, **where)

    def warning(self, message: str, **where: Any) -> None:
        self.diag("warning", message, **where)

    def envelope(self, exit_code: int) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "command": self.command,
                "ok": exit_code == 0, "exitCode": exit_code, "summary": self.summary,
                "items": self.items, "events": self.events,
                "diagnostics": self.diagnostics}

    def emit(self, fmt: str, exit_code: int, out: TextIO | None = None) -> int:
        """Print the envelope (json/yaml) and return ``exit_code``."""
        out = out or sys.stdout
        out.write(dumps(self.envelope(exit_code), fmt))
        out.flush()
        return exit_code


def dumps(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    import yaml

    return str(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False,
                              allow_unicode=True))


def print_diagnostics(result: Result, stream: TextIO | None = None) -> None:
    """The text form of diagnostics: ``smtpctl: warning: file:line:col: path: message``."""
    stream = stream or sys.stderr
    for d in result.diagnostics:
        where = ""
        if d.get("file"):
            where = d["file"] + (f":{d['line']}:{d.get('column', 0)}" if d.get("line") else "")
            where += ": "
        path = f"{d['path']}: " if d.get("path") else ""
        subject = f" [{d['kind']}/{d['name']}]" if d.get("kind") and d.get("name") else ""
        label = "" if d["severity"] == "error" else f"{d['severity']}: "
        print(f"smtpctl: {label}{where}{path}{d['message']}{subject}", file=stream)
