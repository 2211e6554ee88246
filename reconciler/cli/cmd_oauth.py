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

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_files
from reconciler.cli.trust import add_trust_options, policy_from_args

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
        p.add_argument("provider", metavar="PROVIDER", help="OAuth2Provider name")
        add_files(p)
        p.add_argument("-n", "--namespace", default=None,
                       help="namespace of the provider (default: the only match)")
        p.add_argument("--kubeconfig", default=None,
                       help="kubeconfig for secretKeyRef references (default: $KUBECONFIG, "
                       "~/.kube/config, in-cluster)")
        p.add_argument("--context", default=None, help="kubeconfig context")
        add_trust_options(p)
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
    from reconciler.credentials.base import CredentialError
    from reconciler.credentials.oauth import TokenManager, check_provider, revoke
    from reconciler.credentials.sources import default_sources

    sources = default_sources(kubeconfig=args.kubeconfig, context=args.context,
                              policy=policy_from_args(args))
    http_timeout = args.timeout if args.timeout and args.action != "login" else 10.0
    tokens = TokenManager(sources, timeout_seconds=http_timeout)
    name = f"{provider.metadata.namespace}/{provider.metadata.name}"
    try:
        if args.action == "token":
            check = await check_provider(provider, tokens)
            if not check.ready:
                print(f"smtpctl: OAuth2Provider {name}: {check.reason}: {check.message}",
                      file=sys.stderr)
                return EXIT_FAILED
            print(f"OAuth2Provider {name}: {check.message} (the token is not shown)")
            for w in check.warnings:
                print(f"warning: {w}", file=sys.stderr)
            return EXIT_OK
        if args.action == "revoke":
            what = await revoke(provider, sources, tokens)
            print(f"OAuth2Provider {name}: revoked {what}")
            return EXIT_OK
        return await _login(args, provider, sources, tokens, extra)
    except CredentialError as exc:
        print(f"smtpctl: OAuth2Provider {name}: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


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
    from pydantic import ValidationError

    from reconciler.engine.reconcile import render_validation_error
    from reconciler.resources import KIND_OAUTH2, OAuth2Provider
    from reconciler.runtimes.local import InputError, load_documents

    try:
        docs = load_documents(args.files)
    except InputError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    matches = []
    for d in docs:
        meta = d.data.get("metadata") or {}
        if d.data.get("kind") != KIND_OAUTH2 or not isinstance(meta, dict):
            continue
        if meta.get("name") != args.provider:
            continue
        if args.namespace and (meta.get("namespace") or "default") != args.namespace:
            continue
        matches.append(d)
    if not matches:
        print(f"smtpctl: no OAuth2Provider named {args.provider!r} in the input",
              file=sys.stderr)
        return EXIT_USAGE
    if len(matches) > 1:
        print(f"smtpctl: {len(matches)} OAuth2Providers named {args.provider!r}; pick one "
              "with -n NAMESPACE", file=sys.stderr)
        return EXIT_USAGE
    try:
        return OAuth2Provider.model_validate(matches[0].data)
    except ValidationError as exc:
        print(f"smtpctl: {matches[0].source}: {render_validation_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
