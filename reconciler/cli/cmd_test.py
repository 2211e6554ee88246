"""``smtpctl test``: the original form's "Test Connection" button, without "Save".

For every ExternalSmtp in the input (or only ``--name``), resolve its credentials from
their references, run the connection test and print the verdict.  Nothing is stored:
no state directory is read or written.

Decisions where the issue is silent:

* input errors (unreadable file, invalid manifest, no ExternalSmtp, unknown ``--name``)
  exit 2, like usage errors: nothing was tested.  The input is first checked by the
  schema layer (the same diagnostics as ``smtpctl validate``: ``file:line:col``, JSON
  path), then loaded like ``apply``/``plan`` load it;
* a resource whose credentials cannot be resolved is reported as a failed result at stage
  ``credentials`` with the credential reason (``EnvVarNotSet``, ``KubernetesUnavailable``,
  ...), so one bad reference does not hide the others' results;
* several resources are tested concurrently (at most 8 at once), printed in input order;
* the egress policy is the local default: loopback allowed, link-local and cloud metadata
  addresses refused; ``--deny-egress CIDR`` adds networks (the operator has its own flags).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_files, add_output
from reconciler.cli.trust import add_trust_options, policy_from_args

HELP = "run the connection test of ExternalSmtp resources, without saving anything"
MAX_CONCURRENT = 8
JSON_KEYS = ("name", "namespace", "passed", "stage", "reason", "message", "action",
             "retryable", "warnings", "durationSeconds", "transcript")


def configure(parser: argparse.ArgumentParser) -> None:
    add_files(parser)
    parser.add_argument("--name", metavar="NAME",
                        help="test only the ExternalSmtp with this metadata.name")
    add_output(parser, ("text", "json"))
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the redacted SMTP transcript with timings")
    parser.add_argument("--send-test-message", metavar="TO", default=None,
                        help="opt in to sending one real test message to TO (instead of "
                             "stopping after RCPT TO)")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="kubeconfig for secretKeyRef references (default: $KUBECONFIG, "
                             "~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--deny-egress", action="append", default=[], metavar="CIDR",
                        help="refuse to connect to this network too (repeatable)")
    add_trust_options(parser)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from reconciler.probe import EgressPolicy
    from reconciler.resources import ExternalSmtp, OAuth2Provider, parse_resource
    from reconciler.runtimes.local import InputError, load_documents, validate_documents

    if not _schema_valid(args.files):
        return EXIT_USAGE
    try:
        manifests = validate_documents(load_documents(args.files))
        policy = EgressPolicy.from_strings(deny=args.deny_egress)
    except InputError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError:
        print("smtpctl: --deny-egress: expected a network such as 10.0.0.0/8", file=sys.stderr)
        return EXIT_USAGE
    relays: list[ExternalSmtp] = []
    providers: dict[tuple[str, str], OAuth2Provider] = {}
    for m in manifests:
        try:
            res = parse_resource(m)
        except ValidationError:  # validate_documents already accepted it
            continue
        if isinstance(res, ExternalSmtp):
            relays.append(res)
        else:
            providers[(res.metadata.namespace, res.metadata.name)] = res
    if args.name is not None:
        relays = [r for r in relays if r.metadata.name == args.name]
        if not relays:
            print(f"smtpctl: no ExternalSmtp named {args.name!r} in the input", file=sys.stderr)
            return EXIT_USAGE
    if not relays:
        print("smtpctl: the input holds no ExternalSmtp to test", file=sys.stderr)
        return EXIT_USAGE
    results = asyncio.run(_test_all(relays, providers, args, policy))
    if args.output == "json":
        # Exactly the documented shape (issue 3); details are for the text view.
        public = [{k: v for k, v in r.items() if k in JSON_KEYS} for r in results]
        print(json.dumps({"results": public}, indent=2))
    else:
        _print_text(results, verbose=args.verbose)
    return EXIT_OK if all(r["passed"] for r in results) else EXIT_FAILED


def _schema_valid(files: list[str]) -> bool:
    """Validate the input with the schema layer first, for ``file:line:col`` diagnostics
    (guarantee 7); stdin is read once and handed to both readers.  Status is allowed
    (``kubectl get -o yaml`` output can be tested as is)."""
    import io

    from reconciler.schema.report import render_text
    from reconciler.schema.validate import Options, validate_paths

    stdin: io.BytesIO | None = None
    if "-" in files:
        data = sys.stdin.buffer.read()
        stdin = io.BytesIO(data)
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    report = validate_paths(files, Options(allow_status=True), stdin=stdin)
    if report.valid:
        return True
    print(render_text(report), file=sys.stderr, end="")
    return False


async def _test_all(relays: list[Any], providers: dict[tuple[str, str], Any],
                    args: argparse.Namespace, policy: Any) -> list[dict[str, Any]]:
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
                "message": exc.message, "action": entry.action if entry else "",
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
        "message": verdict.message, "action": verdict.action, "retryable": verdict.retryable,
        "warnings": list(dict.fromkeys([*verdict.warnings, *creds.warnings])),
        "durationSeconds": round(verdict.duration_seconds, 3),
        "transcript": [t.to_json() for t in verdict.transcript],
        "details": _json_safe(verdict.details),
    }


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(details, default=str))
    return out if isinstance(out, dict) else {}


def _print_text(results: list[dict[str, Any]], *, verbose: bool) -> None:
    from reconciler import catalog

    for r in results:
        who = f"{r['namespace']}/{r['name']}"
        d = r.get("details") or {}
        if r["passed"]:
            facts = [f"{r['durationSeconds']:.2f}s"]
            if d.get("tlsVersion"):
                facts.append(f"{d.get('tlsMode')} {d['tlsVersion']}")
            else:
                facts.append("no TLS")
            if d.get("mechanism"):
                facts.append(f"AUTH {d['mechanism']}")
            if d.get("relayCheck"):
                facts.append(f"relay check {d['relayCheck']}")
            print(f"{who}: PASSED ({', '.join(facts)})")
        else:
            again = "retry may help" if r["retryable"] else "needs a change"
            print(f"{who}: FAILED at {r['stage']}: {r['reason']} ({again})")
            print(f"  {r['message']}")
            print(f"  action: {r['action']}")
        for w in r["warnings"]:
            entry = catalog.CATALOG.get(w)
            print(f"  warning: {w}: {entry.message if entry else ''}")
        if verbose and r["transcript"]:
            print("  transcript:")
            for t in r["transcript"]:
                side = "C:" if t["direction"] == "c" else "S:"
                print(f"    {t['elapsedSeconds']:8.3f}s {side} {t['line']}")
