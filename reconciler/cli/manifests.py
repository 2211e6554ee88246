"""Reading ``-f`` input for every command the same way, into a :class:`Result`.

The rules are :mod:`reconciler.runtimes.inputs`'; this module only renders them: every
diagnostic (errors and warnings, ``file:line:col``) goes into the result envelope, and in
text mode to stderr.  A document of another kind is counted (``summary.skipped``) and
mentioned once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from reconciler.cli.output import Result


def add_loaded(result: Result, loaded: Any) -> int:
    """Copy ``loaded``'s diagnostics into ``result``; the exit code they imply."""
    for d in loaded.diagnostics:
        result.diag(d.severity, d.message, file=d.file, line=d.line or None,
                    column=d.column or None, path=d.path or None, kind=d.kind, name=d.name)
    if loaded.skipped:
        result.diag("info", f"{loaded.skipped} document(s) of other kinds skipped")
    result.summary["documents"] = loaded.documents
    result.summary["skipped"] = loaded.skipped
    if loaded.io_errors:
        return EXIT_USAGE
    return EXIT_OK if loaded.ok else EXIT_FAILED


def read_args(args: argparse.Namespace, result: Result, *, lookup: bool = False,
              ) -> tuple[Any, Any, int]:
    """Read ``args.files`` with the command's options: (inputs, loaded, exit code).

    ``lookup``: ``-n`` selects among the manifests by the namespace rule (``oauth``)
    instead of being the namespace manifests go into."""
    from reconciler.runtimes import inputs

    raw = inputs.read(args.files or [])
    loaded = inputs.load(raw, allow_status=getattr(args, "allow_status", False),
                         namespace=None if lookup else getattr(args, "namespace", None))
    return raw, loaded, add_loaded(result, loaded)


def print_text_diagnostics(result: Result, *, quiet_info: bool = False) -> None:
    from reconciler.cli.output import print_diagnostics

    if quiet_info:
        keep = [d for d in result.diagnostics if d["severity"] != "info"]
        shown = Result(result.command)
        shown.diagnostics = keep
        print_diagnostics(shown, sys.stderr)
    else:
        print_diagnostics(result, sys.stderr)
