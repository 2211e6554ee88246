"""``smtpctl oauth login|token|revoke PROVIDER -f FILE``: OAuth 2.0 provider chores.

* ``login``  - the one-time authorization-code login (PKCE, loopback redirect) that puts a
  refresh token into the provider's ``refreshTokenFrom`` (file or Kubernetes Secret).  The
  token is printed only with ``--print-refresh-token``.
* ``token``  - checks that an access token can be obtained (and that ``testEndpoint``
  accepts it) without printing it: the provider's readiness check, from the command line.
* ``revoke`` - revokes the refresh token (or, for ClientCredentials, a fresh access token)
  at ``revokeEndpoint`` (RFC 7009).

Exit codes: 0 done, 1 the provider failed (the message names the reason), 2 usage/input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_input_options,
    add_namespace_options,
    add_output,
)

HELP = "OAuth 2.0 providers: login (obtain a refresh token), token (check), revoke"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "login": "authorization-code login (PKCE); stores the refresh token in "
                 "refreshTokenFrom",
        "token": "check that an access token can be obtained (never printed)",
        "revoke": "revoke the refresh token at revokeEndpoint",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("provider", metavar="PROVIDER",
                       help="OAuth2Provider name (or oauth2provider/NAME)")
        add_input_options(p)
        add_namespace_options(p, all_flag=False)
        if action != "login":
            add_output(p, ("text", "json", "yaml"))
        p.add_argument("--kubeconfig", default=None,
                       help="kubeconfig for secretKeyRef references (default: $KUBECONFIG, "
                       "~/.kube/config, in-cluster)")
        p.add_argument("--context", default=None, help="kubeconfig context")
        p.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="seconds to wait (login: for the browser redirect, default 300; "
                       "others: per HTTP request, default 10)")
        if action == "login":
            p.add_argument("--print-refresh-token", action="store_true",
                           help="also print the refresh token to stdout (it is a secret)")
            p.add_argument("--no-browser", action="store_true",
                           help="only print the authorization URL; do not open a browser")
            p.add_argument("--auth-param", action="append", default=[], metavar="KEY=VALUE",
                           help="extra authorization request parameter, e.g. "
                           "access_type=offline (Google); repeatable")


def run(args: argparse.Namespace) -> int:
    provider = _load_provider(args)
    if isinstance(provider, int):
        return provider
    extra: dict[str, str] = {}
    for item in getattr(args, "auth_param", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"smtpctl: --auth-param {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
        extra[key] = value
    return asyncio.run(_run(args, provider, extra))


async def _run(args: argparse.Namespace, provider: Any, extra: dict[str, str]) -> int:
    from reconciler.cli.trust import policy_from_args
    from reconciler.credentials.base import CredentialError
    from reconciler.credentials.oauth import TokenManager, check_provider, revoke
    from reconciler.credentials.sources import default_sources

    sources = default_sources(kubeconfig=args.kubeconfig, context=args.context,
                              policy=policy_from_args(args))
    http_timeout = args.timeout if args.timeout and args.action != "login" else 10.0
    tokens = TokenManager(sources, timeout_seconds=http_timeout)
    name = f"{provider.metadata.namespace}/{provider.metadata.name}"
    from reconciler import catalog
    from reconciler.cli.output import Result

    result = Result(f"oauth {args.action}")
    fmt = getattr(args, "output", "text")
    structured = fmt in ("json", "yaml")
    head = (provider.metadata.namespace, provider.metadata.name)

    def fail(reason: str, message: str) -> int:
        entry = catalog.CATALOG.get(reason)
        result.item("OAuth2Provider", *head, ready="False", reason=reason, message=message,
                    action=entry.action if entry else None,
                    retryable=entry.retryable if entry else None)
        if structured:
            return result.emit(fmt, EXIT_FAILED)
        print(f"smtpctl: OAuth2Provider {name}: {reason}: {message}", file=sys.stderr)
        if entry is not None:
            print(f"  action: {entry.action}", file=sys.stderr)
        return EXIT_FAILED

    try:
        if args.action == "token":
            check = await check_provider(provider, tokens)
            if not check.ready:
                return fail(check.reason, check.message)
            result.item("OAuth2Provider", *head, ready="True", reason=check.reason,
                        message=check.message, warnings=list(check.warnings))
            if structured:
                return result.emit(fmt, EXIT_OK)
            print(f"OAuth2Provider {name}: {check.message} (the token is not shown)")
            for w in check.warnings:
                print(f"warning: {w}", file=sys.stderr)
            return EXIT_OK
        if args.action == "revoke":
            what = await revoke(provider, sources, tokens)
            result.item("OAuth2Provider", *head, operation="revoke", message=f"revoked {what}")
            if structured:
                return result.emit(fmt, EXIT_OK)
            print(f"OAuth2Provider {name}: revoked {what}")
            return EXIT_OK
        return await _login(args, provider, sources, tokens, extra)
    except CredentialError as exc:
        return fail(exc.reason, exc.message)


async def _login(args: argparse.Namespace, provider: Any, sources: Any, tokens: Any,
                 extra: dict[str, str]) -> int:
    from reconciler.credentials.login import login

    def announce(url: str) -> None:
        print("Open this URL in a browser to authorize smtpctl:", file=sys.stderr)
        print(url, file=sys.stderr, flush=True)

    opener = None
    if not args.no_browser:
        import webbrowser

        opener = webbrowser.open
    target = provider.spec.refresh_token_from
    if (target is None or target.env is not None) and not args.print_refresh_token:
        # Refuse before the browser dance: the token would have nowhere to go.
        why = ("has no refreshTokenFrom" if target is None else
               f"reads its refresh token from {target.describe()}, which cannot be written")
        print(f"smtpctl: the provider {why}; pass --print-refresh-token and store the token "
              "yourself, or use a file or secretKeyRef reference", file=sys.stderr)
        return EXIT_USAGE
    result = await login(provider, sources, tokens, announce=announce, open_browser=opener,
                         timeout_seconds=args.timeout or 300, extra_params=extra,
                         persist=provider.spec.refresh_token_from is not None)
    name = f"{provider.metadata.namespace}/{provider.metadata.name}"
    if args.print_refresh_token:
        print(result.refresh_token.reveal())  # explicitly requested by the user
    if result.persisted:
        print(f"OAuth2Provider {name}: refresh token {result.message}", file=sys.stderr)
        return EXIT_OK
    print(f"smtpctl: OAuth2Provider {name}: refresh token {result.message}", file=sys.stderr)
    return EXIT_OK if args.print_refresh_token else EXIT_FAILED


def _load_provider(args: argparse.Namespace) -> Any:
    """The one OAuth2Provider ``args.provider`` names in the input (the namespace rule of
    every command: unique across namespaces, or ``-n``)."""
    from reconciler.cli.manifests import print_text_diagnostics, read_args
    from reconciler.cli.names import KIND_OAUTH2, LookupProblem, NameError_, find, kinds_of
    from reconciler.cli.output import Result
    from reconciler.resources import OAuth2Provider
    from reconciler.runtimes.local import ref_of

    result = Result(f"oauth {args.action}")
    name = args.provider
    if "/" in name:
        kind, _, name = name.partition("/")
        try:
            if kinds_of(kind) != [KIND_OAUTH2]:
                raise NameError_(f"{args.provider!r}: oauth commands take an OAuth2Provider")
        except NameError_ as exc:
            print(f"smtpctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    _, loaded, code = read_args(args, result, lookup=True)
    fmt = getattr(args, "output", "text")
    if code != EXIT_OK:
        if fmt in ("json", "yaml"):
            return result.emit(fmt, code)
        print_text_diagnostics(result, quiet_info=True)
        return code

    class _Obj:
        def __init__(self, manifest: dict[str, Any]) -> None:
            self.ref = ref_of(manifest)
            self.manifest = manifest

    objs = [_Obj(m) for m in loaded.manifests]
    try:
        found = find(objs, [KIND_OAUTH2], name, args.namespace)
    except LookupProblem as exc:
        result.error(f"{exc} (in the input)")
        if fmt in ("json", "yaml"):
            return result.emit(fmt, EXIT_FAILED)
        print(f"smtpctl: {exc} (in the input)", file=sys.stderr)
        return EXIT_FAILED
    return OAuth2Provider.model_validate(found.manifest)
