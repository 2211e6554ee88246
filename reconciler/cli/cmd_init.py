"""``smtpctl init PROVIDER``: a manifest for a well-known provider, with comments.

Gmail (app password or OAuth 2.0), Microsoft 365 (OAuth 2.0 client credentials with the
``outlook.office365.com/.default`` scope), Amazon SES (implicit TLS on 465), SendGrid
(username ``apikey``), Mailgun, Postmark and an internal relay: the right host, port, TLS
mode and authentication, and comments saying what is left to do.  Secrets are references
(``--secret``, default ``file:secrets/NAME-password``).  Every output passes
``smtpctl validate --strict``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler.cli.common import EXIT_OK, EXIT_USAGE, add_namespace_options, add_output

HELP = "print a manifest for a well-known provider (gmail, microsoft365, ses, sendgrid, ...)"


def configure(parser: argparse.ArgumentParser) -> None:
    from reconciler.wellknown import PROVIDERS

    parser.add_argument("provider", metavar="PROVIDER", nargs="?",
                        choices=[p.key for p in PROVIDERS],
                        help="; ".join(f"{p.key}: {p.title}" for p in PROVIDERS))
    parser.add_argument("--name", help="metadata.name (default: the provider)")
    add_namespace_options(parser, all_flag=False, manifests=True)
    parser.add_argument("--username", help="the login (default: a placeholder to edit)")
    parser.add_argument("--from", dest="sender", metavar="ADDRESS",
                        help="the sender address (spec.from)")
    parser.add_argument("--secret", metavar="REF",
                        help="where the password (OAuth: the client secret) comes from: "
                        "file:PATH, env:NAME or secret:NAME/KEY (default "
                        "file:secrets/NAME-password)")
    parser.add_argument("--tenant", help="microsoft365: the tenant id or domain")
    parser.add_argument("--client-id", help="OAuth 2.0: the app registration's client id")
    parser.add_argument("--list", action="store_true", help="list the providers")
    add_output(parser, ("text", "json", "yaml"))


def run(args: argparse.Namespace) -> int:
    from reconciler.cli import scaffold
    from reconciler.wellknown import PROVIDERS

    if args.list or args.provider is None:
        if args.provider is None and not args.list:
            print("smtpctl init: give a provider (smtpctl init --list)", file=sys.stderr)
        for p in PROVIDERS:
            print(f"{p.key:<13} {p.title}: {p.host}:{p.port}")
        return EXIT_OK if args.list else EXIT_USAGE
    try:
        secret = scaffold.parse_secret(args.secret) if args.secret else None
        manifests = scaffold.init(args.provider, name=args.name, namespace=args.namespace,
                                  username=args.username, sender=args.sender, secret=secret,
                                  tenant=args.tenant, client_id=args.client_id)
    except scaffold.ScaffoldError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return emit(args, "init", manifests)


def emit(args: argparse.Namespace, command: str, manifests: Sequence[object]) -> int:
    from reconciler.cli import scaffold
    from reconciler.cli.output import Result

    ms = [m for m in manifests if isinstance(m, scaffold.Manifest)]
    if args.output in ("json", "yaml"):
        result = Result(command)
        for m in ms:
            result.item(m.kind, m.namespace, m.name, manifest=m.doc, notes=m.notes)
        result.summary = {"manifests": len(ms)}
        return result.emit(args.output, EXIT_OK)
    sys.stdout.write(scaffold.render(ms))
    return EXIT_OK
