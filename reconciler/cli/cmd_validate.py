"""``smtpctl validate``: the offline CI dry-run over manifests.

Imports only the schema layer (PyYAML's C loader and jsonschema_rs): no pydantic, no
SMTP, OAuth or Kubernetes stack, so one file validates in well under 0.12 s from a cold
start.  Exit codes: 0 valid, 1 any error (warnings too with ``--strict``), 2 usage or
I/O error (a missing file), which wins over 1.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_files, add_output

HELP = "check manifests offline (schema + semantic checks), for CI and pre-commit"


def configure(parser: argparse.ArgumentParser) -> None:
    from reconciler.schema.loader import MAX_BYTES
    from reconciler.schema.report import FORMATS

    add_files(parser, required=False)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="more paths, as -f (pre-commit passes file names this way)")
    add_output(parser, FORMATS)
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings as errors (e.g. an oauth2ProviderRef that names "
                             "no provider in the input)")
    parser.add_argument("--allow-status", action="store_true",
                        help="accept a status section (for `smtpctl get -o yaml` output)")
    parser.add_argument("--max-bytes", type=positive_int, default=MAX_BYTES, metavar="N",
                        help=f"refuse files larger than N bytes (default {MAX_BYTES})")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def run(args: argparse.Namespace) -> int:
    from reconciler.schema.report import render
    from reconciler.schema.validate import Options, validate_paths

    paths = [*(args.files or []), *args.paths]
    if not paths:
        print("smtpctl validate: give at least one -f PATH (or - for stdin)", file=sys.stderr)
        return EXIT_USAGE
    options = Options(strict=args.strict, allow_status=args.allow_status,
                      max_bytes=args.max_bytes)
    report = validate_paths(paths, options)
    sys.stdout.write(render(report, args.output))
    sys.stdout.flush()
    if report.io_errors:
        return EXIT_USAGE
    return EXIT_OK if report.valid else EXIT_FAILED
