"""``smtpctl validate``: the offline CI dry-run over manifests.

Imports only the schema layer (PyYAML's C loader and jsonschema_rs): no pydantic, no
SMTP, OAuth or Kubernetes stack, so one file validates in well under 0.12 s from a cold
start.  Exit codes: 0 valid, 1 any error (warnings too with ``--strict``), 2 usage or
I/O error (a missing file), which wins over 1.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_input_options,
    add_namespace_options,
    add_output,
)

HELP = "check manifests offline (schema + semantic checks), for CI and pre-commit"


def configure(parser: argparse.ArgumentParser) -> None:
    from reconciler.schema.loader import MAX_BYTES
    from reconciler.schema.report import FORMATS

    add_input_options(parser, required=False)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="more paths, as -f (pre-commit passes file names this way)")
    add_namespace_options(parser, all_flag=False, manifests=True)
    add_output(parser, FORMATS)
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings as errors (e.g. an oauth2ProviderRef that names "
                             "no provider in the input)")
    parser.add_argument("--max-bytes", type=positive_int, default=MAX_BYTES, metavar="N",
                        help=f"refuse files larger than N bytes (default {MAX_BYTES})")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def run(args: argparse.Namespace) -> int:
    from reconciler.schema.validate import Options, validate_paths

    paths = [*(args.files or []), *args.paths]
    if not paths:
        print("smtpctl validate: give at least one -f PATH (or - for stdin)", file=sys.stderr)
        return EXIT_USAGE
    options = Options(strict=args.strict, allow_status=args.allow_status,
                      max_bytes=args.max_bytes)
    report = validate_paths(paths, options)
    if args.namespace is not None:
        _check_namespace(report, args.namespace)
    code = EXIT_USAGE if report.io_errors else EXIT_OK if report.valid else EXIT_FAILED
    if args.output in ("json", "yaml"):
        return _envelope(report, args.output, code, args.namespace or "default")
    from reconciler.schema.report import render

    sys.stdout.write(render(report, args.output))
    sys.stdout.flush()
    return code


def _check_namespace(report: object, namespace: str) -> None:
    """``-n NS``: a document with another explicit namespace is an error (as in apply)."""
    from reconciler.schema.diagnostics import Diagnostic
    from reconciler.schema.validate import Report

    assert isinstance(report, Report)
    for r in report.results:
        if r.namespace is not None and r.namespace != namespace:
            d = Diagnostic(r.file, 0, 0, "metadata.namespace", r.kind, r.name, "error",
                           f"the manifest's namespace {r.namespace!r} does not match "
                           f"-n {namespace}")
            report.diagnostics.append(d)
            r.diagnostics.append(d)


def _envelope(report: object, fmt: str, code: int, namespace: str) -> int:
    from reconciler.cli.output import Result
    from reconciler.schema.report import summary
    from reconciler.schema.validate import Report

    assert isinstance(report, Report)
    result = Result("validate")
    result.summary = summary(report)
    for r in report.results:
        errors = [d for d in r.diagnostics if d.severity == "error"]
        ns = r.namespace or (namespace if r.kind else None)
        result.items.append({"kind": r.kind, "namespace": ns, "name": r.name,
                             "file": r.file, "document": r.index + 1, "valid": not errors})
    for r in report.skipped_documents:
        result.items.append({"kind": r.kind, "namespace": None, "name": r.name,
                             "file": r.file, "document": r.index + 1, "skipped": True})
    result.diagnostics = [d.as_json() for d in report.diagnostics]
    return result.emit(fmt, code)
