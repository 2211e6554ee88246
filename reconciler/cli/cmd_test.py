"""``smtpctl test``: the original form's "Test Connection" button, without "Save".

For every ExternalSmtp in the input (or only ``--name``), resolve its credentials from
their references, run the connection test and print the verdict.  Nothing is stored:
no state directory is read or written.

Decisions where the issue is silent:

* the input is read like every command reads it (docs/cli.md): invalid input is exit 1
  with ``file:line:col`` diagnostics, an unreadable file exit 2, an input without any
  ExternalSmtp exit 2 (nothing to test), a ``--name`` that is not in the input exit 1
  (NotFound);
* a resource whose credentials cannot be resolved is reported as a failed result at stage
  ``credentials`` with the credential reason (``EnvVarNotSet``, ``KubernetesUnavailable``,
  ...), so one bad reference does not hide the others' results;
* several resources are tested concurrently (at most 8 at once), printed in input order;
* ``-o json|yaml`` is the result envelope, each item with the probe's details (TLS
  version and cipher, peer, mechanism, fallback, relay check); ``-o junit`` one test case
  per relay, ``-o github`` workflow annotations for failures and warnings;
* the egress policy is the local default: loopback allowed, link-local and cloud metadata
  addresses refused; ``--deny-egress CIDR`` adds networks, ``--allow-egress CIDR`` permits
  a denied one (the same options as ``apply``, ``reconcile`` and the operator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from reconciler.cli.trust import add_egress_options, egress_from_args

HELP = "run the connection test of ExternalSmtp resources, without saving anything"
MAX_CONCURRENT = 8
FORMATS = ("text", "json", "yaml", "junit", "github")


def configure(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    parser.add_argument("--name", metavar="NAME",
                        help="test only the ExternalSmtp with this metadata.name")
    add_namespace_options(parser, all_flag=False, manifests=True)
    add_output(parser, FORMATS)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the redacted SMTP transcript with timings")
    parser.add_argument("--send-test-message", metavar="TO", default=None,
                        help="opt in to sending one real test message to TO (instead of "
                             "stopping after RCPT TO)")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="kubeconfig for secretKeyRef references (default: $KUBECONFIG, "
                             "~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    add_egress_options(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.manifests import print_text_diagnostics, read_args
    from reconciler.cli.output import Result
    from reconciler.resources import ExternalSmtp, OAuth2Provider, parse_resource

    result = Result("test")
    structured = args.output in ("json", "yaml")

    def stop(code: int) -> int:
        if structured:
            return result.emit(args.output, code)
        print_text_diagnostics(result, quiet_info=True)
        return code

    try:
        policy = egress_from_args(args)
    except ValueError as exc:
        result.error(str(exc))
        return stop(EXIT_USAGE)
    _, loaded, code = read_args(args, result)
    if code != EXIT_OK:
        return stop(code)
    relays: list[tuple[ExternalSmtp, str]] = []
    providers: dict[tuple[str, str], OAuth2Provider] = {}
    for m, source in zip(loaded.manifests, loaded.sources, strict=True):
        res = parse_resource(m)  # the loader validated it with the same models
        if isinstance(res, ExternalSmtp):
            relays.append((res, source))
        else:
            providers[(res.metadata.namespace, res.metadata.name)] = res
    if not relays:
        result.error("the input holds no ExternalSmtp to test")
        return stop(EXIT_USAGE)
    if args.name is not None:
        relays = [r for r in relays if r[0].metadata.name == args.name]
        if not relays:
            result.error(f"no ExternalSmtp named {args.name!r} in the input")
            return stop(EXIT_FAILED)
    if not structured:
        print_text_diagnostics(result, quiet_info=True)
    results = asyncio.run(_test_all([r for r, _ in relays], providers, args, policy))
    for r, (_, source) in zip(results, relays, strict=True):
        r["file"] = source
        result.item("ExternalSmtp", r.pop("namespace"), r.pop("name"), **r)
    passed = sum(1 for r in result.items if r["passed"])
    result.summary.update({"tested": len(result.items), "passed": passed,
                           "failed": len(result.items) - passed})
    code = EXIT_OK if passed == len(result.items) else EXIT_FAILED
    if structured:
        return result.emit(args.output, code)
    out = {"text": lambda: _text(result.items, verbose=args.verbose),
           "junit": lambda: _junit(result.items), "github": lambda: _github(result.items)}
    sys.stdout.write(out[args.output]())
    return code


async def _test_all(relays: list[Any], providers: dict[tuple[str, str], Any],
                    args: argparse.Namespace, policy: Any) -> list[dict[str, Any]]:
    from reconciler.cli.trust import policy_from_args
    from reconciler.credentials.oauth import TokenManager
    from reconciler.credentials.sources import default_sources

    sources = default_sources(kubeconfig=args.kubeconfig, context=args.context,
                              policy=policy_from_args(args))
    tokens = TokenManager(sources, egress=policy)
    gate = asyncio.Semaphore(MAX_CONCURRENT)

    async def one(relay: Any) -> dict[str, Any]:
        async with gate:
            ns = relay.metadata.namespace
            in_ns = {name: p for (pns, name), p in providers.items() if pns == ns}
            return await _test_one(relay, in_ns, sources, tokens, policy,
                                   args.send_test_message)

    return list(await asyncio.gather(*(one(r) for r in relays)))


async def _test_one(relay: Any, providers: dict[str, Any], sources: Any, tokens: Any,
                    policy: Any, send_to: str | None) -> dict[str, Any]:
    from reconciler import catalog
    from reconciler.credentials.base import CredentialError
    from reconciler.credentials.resolve import resolve_smtp_credentials
    from reconciler.probe import run_probe

    head = {"name": relay.metadata.name, "namespace": relay.metadata.namespace}
    try:
        creds = await resolve_smtp_credentials(relay, providers=providers, sources=sources,
                                               tokens=tokens)
    except CredentialError as exc:
        entry = catalog.CATALOG.get(exc.reason)
        return {**head, "passed": False, "stage": "credentials", "reason": exc.reason,
                "message": exc.message, "action": entry.action if entry else None,
                "retryable": bool(entry and entry.retryable), "warnings": [],
                "durationSeconds": 0.0, "transcript": [], "details": {}}
    verdict = await run_probe(relay.spec, creds.probe, policy=policy,
                              send_test_message_to=send_to)
    # `test` stores nothing, except a refresh token the endpoint rotated: that one goes
    # back to the very reference it was read from (else the old one is dead), and we say so.
    pref = relay.spec.oauth2_provider_ref
    notices = list(tokens.notices(providers[pref.name])) \
        if pref is not None and pref.name in providers else []
    for note in notices:
        print(f"smtpctl: note: {note}", file=sys.stderr)
    return {
        **head, "passed": verdict.passed, "stage": verdict.stage, "reason": verdict.reason,
        "message": verdict.message, "action": None if verdict.passed else verdict.action,
        "retryable": verdict.retryable,
        "warnings": list(dict.fromkeys([*verdict.warnings, *creds.warnings])),
        "durationSeconds": round(verdict.duration_seconds, 3),
        "transcript": [t.to_json() for t in verdict.transcript],
        "details": _json_safe(verdict.details),
    }


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(details, default=str))
    return out if isinstance(out, dict) else {}


def _text(items: list[dict[str, Any]], *, verbose: bool) -> str:
    from reconciler import catalog
    from reconciler.resources import format_duration

    lines: list[str] = []
    w = lines.append
    for r in items:
        who = f"{r['namespace']}/{r['name']}"
        d = r.get("details") or {}
        if r["passed"]:
            facts = [format_duration(r["durationSeconds"])]
            if d.get("tlsVersion"):
                facts.append(f"{d.get('tlsMode')} {d['tlsVersion']}")
            else:
                facts.append("no TLS")
            if d.get("mechanism"):
                facts.append(f"AUTH {d['mechanism']}")
            if d.get("relayCheck"):
                facts.append(f"relay check {d['relayCheck']}")
            w(f"{who}: PASSED ({', '.join(facts)})")
        else:
            again = "retry may help" if r["retryable"] else "needs a change"
            w(f"{who}: FAILED at {r['stage']}: {r['reason']} ({again})")
            w(f"  {r['message']}")
            if r.get("action"):
                w(f"  action: {r['action']}")
        for warning in r["warnings"]:
            entry = catalog.CATALOG.get(warning)
            w(f"  warning: {warning}: {entry.message if entry else ''}"
              + (f"; {entry.action}" if entry else ""))
        if verbose and r["transcript"]:
            w("  transcript:")
            for t in r["transcript"]:
                side = "C:" if t["direction"] == "c" else "S:"
                w(f"    {t['elapsedSeconds']:8.3f}s {side} {t['line']}")
    return "\n".join(lines) + "\n"


def _junit(items: list[dict[str, Any]]) -> str:
    from reconciler.schema.report import escape, quoteattr

    cases = []
    failures = 0
    total_time = 0.0
    for r in items:
        total_time += r["durationSeconds"]
        name = f"ExternalSmtp/{r['namespace']}/{r['name']}"
        case = (f"    <testcase classname={quoteattr(r.get('file') or 'smtpctl test')} "
                f"name={quoteattr(name)} time=\"{r['durationSeconds']:.3f}\">\n")
        if not r["passed"]:
            failures += 1
            summary = f"{r['reason']} at {r['stage']}: {r['message']}"
            body = summary + (f"\naction: {r['action']}" if r.get("action") else "")
            case += (f"      <failure message={quoteattr(summary)} type={quoteattr(r['reason'])}>"
                     f"{escape(body)}</failure>\n")
        if r["warnings"]:
            case += f"      <system-out>{escape('warnings: ' + ', '.join(r['warnings']))}" \
                    "</system-out>\n"
        cases.append(case + "    </testcase>\n")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
            f'  <testsuite name="smtpctl test" tests="{len(items)}" failures="{failures}" '
            f'errors="0" skipped="0" time="{total_time:.3f}">\n'
            + "".join(cases) + "  </testsuite>\n</testsuites>\n")


def _github(items: list[dict[str, Any]]) -> str:
    from reconciler import catalog
    from reconciler.schema.report import _gh_escape

    lines = []
    for r in items:
        title = _gh_escape(f"ExternalSmtp/{r['namespace']}/{r['name']}", prop=True)
        where = f"file={_gh_escape(r['file'], prop=True)}," if r.get("file") else ""
        if not r["passed"]:
            text = f"{r['reason']} at {r['stage']}: {r['message']}"
            if r.get("action"):
                text += f" - {r['action']}"
            lines.append(f"::error {where}title={title}::{_gh_escape(text, prop=False)}")
        for warning in r["warnings"]:
            entry = catalog.CATALOG.get(warning)
            text = f"{warning}: {entry.message if entry else ''}"
            lines.append(f"::warning {where}title={title}::{_gh_escape(text, prop=False)}")
    passed = sum(1 for r in items if r["passed"])
    lines.append(f"smtpctl test: {len(items)} tested, {passed} passed, "
                 f"{len(items) - passed} failed")
    return "\n".join(lines) + "\n"
