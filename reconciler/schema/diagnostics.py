"""The one shape in which ``smtpctl validate`` reports every problem.

A YAML syntax error, a schema violation and a semantic warning all become a
:class:`Diagnostic` with file, line, column, JSON path, kind/name and a message, so every
output format (text, json, junit, github) renders them the same way.  Lines and columns
are 1-based, as editors show them; 0 means "not known" (e.g. the file could not be read).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, NamedTuple

# NamedTuple/plain classes rather than dataclasses throughout the validate path: each
# dataclass costs ~1.5 ms of import time, and start-up time is a feature here.
Severity = Literal["error", "warning"]
PathPart = str | int
JsonPath = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class Diagnostic(NamedTuple):
    file: str
    line: int
    column: int
    path: str
    kind: str | None
    name: str | None
    severity: Severity
    message: str

    def as_json(self) -> dict[str, object]:
        """The exact ``-o json`` entry shape the issue pins."""
        return {
            "file": self.file, "line": self.line, "column": self.column, "path": self.path,
            "kind": self.kind, "name": self.name, "severity": self.severity,
            "message": self.message,
        }


def format_path(parts: Sequence[PathPart]) -> str:
    """``("spec", "scopes", 0)`` -> ``spec.scopes[0]``; odd keys are quoted:
    ``metadata.annotations["example.com/x"]``."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)
