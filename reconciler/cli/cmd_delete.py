"""``smtpctl delete TYPE NAME... | TYPE/NAME... | -f PATH...``: remove resources.

Deleting the active relay selects the next requested Ready one, if any (an event says
so).  A missing object is an error in every form (exit 1), as in kubectl, unless
``--ignore-not-found``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_input_options,
    add_namespace_options,
    add_output,
    add_store_options,
    worst,
)
from reconciler.cli.localcmd import (
    NoStore,
    add_lock_timeout,
    fail_usage,
    open_for_read,
    run_locked,
)

HELP = "delete resources from the local store (the next Ready relay takes over)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="TYPE NAME... | TYPE/NAME...",
                        help="externalsmtp (esmtp) or oauth2provider (oauth2p) and names")
    add_input_options(parser, required=False)
    add_namespace_options(parser, all_flag=False)
    parser.add_argument("--ignore-not-found", action="store_true",
                        help="a resource that does not exist is not an error")
    add_output(parser, ("text", "json", "yaml", "name"))
    add_store_options(parser)
    add_lock_timeout(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.manifests import print_text_diagnostics, read_args
    from reconciler.cli.names import LookupProblem, NameError_, find, parse_targets
    from reconciler.cli.output import Result
    from reconciler.runtimes.local import ref_of

    result = Result("delete")
    structured = args.output in ("json", "yaml")

    def finish(code: int) -> int:
        if structured:
            return result.emit(args.output, code)
        print_text_diagnostics(result)
        return code

    if bool(args.files) == bool(args.targets):
        return fail_usage("give TYPE NAME..., TYPE/NAME... or -f PATH (one of them)")
    refs: list[Any] = []
    missing: list[tuple[Any, str]] = []  # (ref or None, message)
    targets: list[Any] = []
    if args.files:  # the input is checked first: invalid input is 1, whatever the store
        _, loaded, code = read_args(args, result)
        if code:
            return finish(code)
        refs = [ref_of(m) for m in loaded.manifests]
    else:
        try:
            targets = parse_targets(args.targets, default=None)
        except NameError_ as exc:
            return fail_usage(str(exc))
        if any(t.name is None for t in targets):
            return fail_usage("give a name: delete TYPE NAME or TYPE/NAME")
    try:
        store = open_for_read(args)
    except NoStore as exc:
        result.error(str(exc))
        return finish(2)
    objs = store.list_sync() if store is not None and targets else []
    for t in targets:
        try:
            refs.append(find(objs, t.kinds, str(t.name), args.namespace).ref)
        except LookupProblem as exc:
            if exc.ambiguous:  # never "ignored": the user must say which one
                result.error(str(exc))
            else:
                missing.append((None, str(exc)))
    if store is None:
        missing += [(r, f"{r.kind} {r.namespace}/{r.name} not found") for r in refs]
        refs = []
    gone: set[Any] = set()
    code = EXIT_FAILED if result.diagnostics else EXIT_OK
    if refs and store is not None:
        from reconciler.runtimes.local import build_world, delete_refs

        def body(locked: Any) -> int:
            gone.update(asyncio.run(delete_refs(locked, build_world(locked), refs)))
            return EXIT_OK

        locked_code = run_locked(store, args.lock_timeout, body)
        if locked_code != EXIT_OK:
            return locked_code
    elif store is not None:
        store.close()
    for r in refs:
        if r in gone:
            result.item(r.kind, r.namespace, r.name, operation="delete")
        else:
            missing.append((r, f"{r.kind} {r.namespace}/{r.name} not found"))
    for ref, message in missing:
        if ref is not None:
            result.item(ref.kind, ref.namespace, ref.name, operation="notFound")
        if not args.ignore_not_found:
            result.error(message)
            code = worst(code, EXIT_FAILED)
    result.summary = {"deleted": len(gone), "notFound": len(missing)}
    if not structured:
        from reconciler.cli.names import display_kind

        for item in result.items:
            if item["operation"] == "delete":
                shown = f"{display_kind(item['kind'])}/{item['name']}"
                print(shown if args.output == "name"
                      else f"{shown} deleted (namespace {item['namespace']})")
            elif args.ignore_not_found and args.output == "text":
                print(f"{display_kind(item['kind'])}/{item['name']} not found (ignored)",
                      file=sys.stderr)
    return finish(code)
