"""``smtpctl import -f FILE...``: JavaMail / Spring mail properties -> a manifest.

Reads ``mail.smtp.*`` (and ``mail.smtps.*``) properties as JavaMail takes them, and Spring
Boot's ``spring.mail.*`` (``application.properties`` or ``application.yml``, including
``spring.mail.properties.mail.smtp.*``), and prints one ExternalSmtp per file with
comments: host, port, STARTTLS or implicit TLS (``smtps``, ``ssl.enable``,
``socketFactory``), authentication, sender, timeouts.  A password is never copied: it
becomes a reference (a Spring placeholder ``${NAME}`` becomes ``env: NAME``; otherwise
``--secret`` or ``file:secrets/NAME-password``) and a comment says where to put it.
Settings that would weaken the test (``ssl.trust=*``, ``socketFactory.fallback=true``,
``checkserveridentity=false``) are not carried over, and the comments say so.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_files,
    add_namespace_options,
    add_output,
)

HELP = "turn JavaMail mail.smtp.* / Spring spring.mail.* properties into a manifest"


def configure(parser: argparse.ArgumentParser) -> None:
    add_files(parser)
    parser.add_argument("--name", help="metadata.name (default: from the host name)")
    add_namespace_options(parser, all_flag=False, manifests=True)
    parser.add_argument("--secret", metavar="REF",
                        help="where the password comes from: file:PATH, env:NAME or "
                        "secret:NAME/KEY (default: env: for a ${NAME} placeholder, else "
                        "file:secrets/NAME-password)")
    add_output(parser, ("text", "json", "yaml"))


def run(args: argparse.Namespace) -> int:
    from reconciler.cli import scaffold
    from reconciler.cli.cmd_init import emit
    from reconciler.schema.validate import describe_paths, iter_inputs

    manifests: list[object] = []
    paths = describe_paths(args.files)
    if len(paths) > 1 and args.name:
        print("smtpctl: --name names one manifest: give one file", file=sys.stderr)
        return EXIT_USAGE
    try:
        secret = scaffold.parse_secret(args.secret) if args.secret else None
    except scaffold.ScaffoldError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for name, raw in _inputs(args.files, iter_inputs):
        if isinstance(raw, OSError):
            print(f"smtpctl: {name}: cannot read: {raw.strerror or raw}", file=sys.stderr)
            return EXIT_USAGE
        try:
            props = scaffold.read_properties(name, raw.decode("utf-8", errors="replace"))
            manifests += scaffold.import_properties(props, source=name, name=args.name,
                                                    namespace=args.namespace, secret=secret)
        except scaffold.ScaffoldError as exc:
            print(f"smtpctl: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return emit(args, "import", manifests)


def _inputs(paths: list[str], iter_inputs: object) -> list[tuple[str, bytes | OSError]]:
    """Files as validate reads them, plus ``*.properties`` in directories."""
    import os
    from pathlib import Path

    out: list[tuple[str, bytes | OSError]] = []
    for p in paths:
        if p != "-" and Path(p).is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.endswith((".properties", ".yml", ".yaml")) and not f.startswith("."):
                        full = os.path.join(root, f)
                        out.append((full, Path(full).read_bytes()))
            continue
        assert callable(iter_inputs)
        out.extend(iter_inputs([p]))
    return out
