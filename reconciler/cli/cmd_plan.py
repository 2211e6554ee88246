"""``smtpctl plan -f PATH...``: what ``apply`` would do; exit 0 no changes, 3 changes.

Like ``terraform plan -detailed-exitcode``: CI can gate on it.  Credentials are resolved
(to see rotated secrets, and to say honestly which relays apply could not test) but
nothing is tested, no token is requested and nothing is written.  ``apply --dry-run``
is this command.

Per resource: create / update (field-level diff, next generation) / metadata /
unchanged / prune; whether apply would run a connection test and why (or why not:
credentials that cannot be resolved block the test); for providers, that apply requests a
token (it checks every provider on every apply).  Per namespace: the selection outcome
(which relay is in use now, and which one will be if the tests pass).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_OK,
    add_input_options,
    add_namespace_options,
    add_output,
    add_store_options,
    state_dir,
)

HELP = "show what apply would change and test (exit 0 nothing, 3 changes)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    add_namespace_options(parser, all_flag=False, manifests=True)
    add_store_options(parser)
    parser.add_argument("--prune", action="store_true", help="also show what --prune deletes")
    add_output(parser, ("text", "json", "yaml"))


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.manifests import print_text_diagnostics, read_args
    from reconciler.cli.output import Result

    result = Result("plan")
    _, loaded, code = read_args(args, result)
    if code != EXIT_OK or not loaded.manifests:
        if code == EXIT_OK:
            result.error("no ExternalSmtp or OAuth2Provider in the input")
            code = 2
        if args.output in ("json", "yaml"):
            return result.emit(args.output, code)
        print_text_diagnostics(result, quiet_info=True)
        return code
    if args.output not in ("json", "yaml"):
        print_text_diagnostics(result, quiet_info=True)
    return run_plan(args, loaded.manifests, result)


def run_plan(args: argparse.Namespace, manifests: list[dict[str, Any]], result: Any) -> int:
    import tempfile

    from reconciler.stores.local import LocalStore

    result.command = "plan" if result.command != "apply" else "apply"
    result.summary["dryRun"] = result.command == "apply"
    sd = state_dir(args)
    structured = args.output in ("json", "yaml")
    if not sd.exists:
        # No side effects: a missing state directory is an empty store, not a new one.
        if sd.explicit:
            result.warning(sd.missing_message() + ": planning against an empty store")
            if not structured:
                print(f"smtpctl: warning: {sd.missing_message()}: planning against an empty "
                      "store", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalStore(tmp)
            try:
                return asyncio.run(_plan(store, manifests, args, result))
            finally:
                store.close()
    store = LocalStore(sd.path, create=False)
    try:
        return asyncio.run(_plan(store, manifests, args, result))
    finally:
        store.close()


async def _plan(store: Any, manifests: list[dict[str, Any]], args: argparse.Namespace,
                result: Any) -> int:
    from reconciler.cli.trust import policy_from_args
    from reconciler.engine.plan import PlanItem, plan_one
    from reconciler.runtimes.local import build_world, prune_candidates, ref_of

    # Offline: secrets are resolved for their versions, but no token endpoint or relay is
    # contacted and nothing is written (plan and apply --dry-run have no side effects).
    world = build_world(store, policy=policy_from_args(args), offline=True)
    items: list[PlanItem] = []
    for m in manifests:
        items.append(await plan_one(m, store.get_sync(ref_of(m)), world))
    by_ref = {ref_of(m): m for m in manifests}
    # A relay whose provider changes is re-tested (the provider's version is in its digest).
    changing = {(i.ref.namespace, i.ref.name) for i in items
                if i.ref.kind == "OAuth2Provider" and i.action in ("create", "update")}
    for idx, (m, item) in enumerate(zip(manifests, items, strict=True)):
        pref = ((m.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
        if item.ref.kind == "ExternalSmtp" and not item.test and pref and (
                (item.ref.namespace, pref) in changing):
            items[idx] = dataclasses.replace(item, test=True,
                                             why=f"OAuth2Provider {pref!r} changes")
    notes: dict[Any, str] = {}
    for idx, item in enumerate(items):
        items[idx], note = await _honest(item, by_ref.get(item.ref), store, world, by_ref)
        if note:
            notes[item.ref] = note
    if getattr(args, "prune", False):
        items += [PlanItem(r, "prune") for r in prune_candidates(store, manifests)]
    selection = _selection(store, manifests, items)
    for i in items:
        kind = i.ref.kind
        check = kind == "OAuth2Provider" and i.action != "prune"
        result.item(kind, i.ref.namespace, i.ref.name, operation=i.action, diff=i.diff,
                    generation=i.generation, test=i.test or check,
                    testWhy=(i.why or None) if not check else
                    "apply requests a token from every provider it applies",
                    blocked=notes.get(i.ref))
    result.events.extend(selection)
    changes = any(i.changes for i in items)
    s = {"create": sum(i.action == "create" for i in items),
         "update": sum(i.action in ("update", "metadata") for i in items),
         "prune": sum(i.action == "prune" for i in items),
         "test": sum(1 for i in items if i.test), "blocked": len(notes),
         "changes": changes}
    result.summary.update(s)
    code = EXIT_CHANGES if changes else EXIT_OK
    if args.output in ("json", "yaml"):
        return int(result.emit(args.output, code))
    sym = {"create": "+", "update": "~", "metadata": "~", "unchanged": "=", "prune": "-"}
    for entry, i in zip(result.items, items, strict=True):
        gen = f" (generation {i.generation})" if i.generation else ""
        why = entry.get("testWhy") or ""
        if entry.get("blocked"):
            test = f"not tested: {entry['blocked']}"
        elif i.ref.kind == "OAuth2Provider" and i.action != "prune":
            test = "check: a token is requested"
        else:
            test = f"test: {why}" if entry["test"] else (f"no test: {why}" if why else "")
        print(f"{sym[i.action]} {i.action:9} {i.ref.kind}/{i.ref.namespace}/{i.ref.name}"
              f"{gen}{'  ' + test if test else ''}")
        for d in i.diff:
            print(f"      {d}")
    for sel in selection:
        print(f"selection: {sel['namespace']}: {sel['message']}")
    print(f"Plan: {s['create']} to create, {s['update']} to update, {s['prune']} to prune, "
          f"{s['test']} to test" + (f", {s['blocked']} blocked" if s["blocked"] else "")
          + ("" if changes else " (no changes)"))
    return code


async def _honest(item: Any, manifest: dict[str, Any] | None, store: Any, world: Any,
                  by_ref: dict[Any, dict[str, Any]]) -> tuple[Any, str | None]:
    """A relay apply would test, checked against what apply will really do: if its
    credentials cannot be resolved, apply records the failure and does not connect."""
    from pydantic import ValidationError

    from reconciler.credentials.base import CredentialError
    from reconciler.resources import ExternalSmtp

    if item.ref.kind != "ExternalSmtp" or not item.test or manifest is None:
        return item, None
    if item.why.startswith("credentials cannot be resolved"):
        return dataclasses.replace(item, test=False), item.why
    try:
        res = ExternalSmtp.model_validate(manifest)
    except ValidationError:
        return item, None
    if res.spec.oauth2_provider_ref is not None:
        name = res.spec.oauth2_provider_ref.name
        from reconciler.stores.base import ObjectRef

        pref = ObjectRef("OAuth2Provider", item.ref.namespace, name)
        if pref not in by_ref and store.get_sync(pref) is None:
            return (dataclasses.replace(item, test=False),
                    f"OAuth2Provider {name!r} does not exist (OAuth2ProviderNotFound)")
        return dataclasses.replace(
            item, why=f"{item.why} (if OAuth2Provider {name!r} gets a token)"), None
    try:
        await world.resolve_credentials(res, None)
    except CredentialError as exc:
        return (dataclasses.replace(item, test=False),
                f"credentials cannot be resolved ({exc.reason}: {exc.message})")
    return item, None


def _selection(store: Any, manifests: list[dict[str, Any]], items: list[Any],
               ) -> list[dict[str, Any]]:
    """Per namespace of the input: the relay in use now and the one apply would leave in
    use, assuming the tests it runs pass (the engine's own rule, ``choose``)."""
    from reconciler.engine.selection import Candidate, candidate, choose
    from reconciler.runtimes.local import ref_of

    out: list[dict[str, Any]] = []
    plan = {i.ref: i for i in items}
    namespaces = sorted({ref_of(m).namespace for m in manifests
                         if m.get("kind") == "ExternalSmtp"})
    for ns in namespaces:
        stored = {o.ref: o for o in store.list_sync("ExternalSmtp", ns)}
        now_cands = [candidate(o) for o in stored.values()]
        current = next((c.name for c in now_cands if c.selected), None)
        cands: list[Candidate] = []
        depends: set[str] = set()
        for ref, obj in stored.items():
            item = plan.get(ref)
            if item is not None and item.action == "prune":
                continue
            c = candidate(obj)
            m = next((m for m in manifests if ref_of(m) == ref), None)
            if m is not None:
                spec = m.get("spec") or {}
                c = dataclasses.replace(c, requested=bool(spec.get("selected")),
                                        priority=_priority(spec))
            if item is not None and item.test:
                c = dataclasses.replace(c, ready=True, has_active=True)
                depends.add(c.name)
            cands.append(c)
        for m in manifests:
            ref = ref_of(m)
            if ref.kind != "ExternalSmtp" or ref.namespace != ns or ref in stored:
                continue
            item = plan.get(ref)
            tested = bool(item is not None and item.test)
            spec = m.get("spec") or {}
            cands.append(Candidate(ref.name, "~", bool(spec.get("selected")),
                                   tested, False, tested, False, priority=_priority(spec)))
            if tested:
                depends.add(ref.name)
        after = choose(cands)
        requested = sorted(c.name for c in cands if c.requested)
        if after == current:
            msg = (f"{current!r} stays the relay in use" if current else
                   "no relay is in use, and none will be (no requested relay can be Ready)")
        elif after is None:
            msg = f"{current!r} stops being the relay in use; none will be"
        else:
            cond_text = " if its test passes" if after in depends else ""
            msg = (f"{after!r} becomes the relay in use{cond_text}"
                   + (f" (instead of {current!r})" if current else ""))
        if len(requested) > 1:
            msg += _others(cands, after)
        entry = {"kind": "ExternalSmtp", "namespace": ns, "name": after or current or "",
                 "type": "Plan", "reason": "Selection", "message": msg,
                 "current": current, "planned": after}
        out.append(entry)
    return out


def _priority(spec: dict[str, Any]) -> int:
    p = spec.get("priority", 0)
    return p if isinstance(p, int) and not isinstance(p, bool) else 0


def _others(cands: list[Any], after: str | None) -> str:
    """The other relays that ask to be selected: standbys (a priority of their own: they
    take over when the preferred one fails) and ties (the same priority as another
    selected relay: a SelectionConflict only age decides)."""
    requested = sorted((c for c in cands if c.requested), key=lambda c: c.order)
    counts: dict[int, int] = {}
    for c in requested:
        counts[c.priority] = counts.get(c.priority, 0) + 1
    others = [c for c in requested if c.name != after]
    standbys = [c for c in others if counts[c.priority] == 1]
    ties = [c for c in others if counts[c.priority] > 1]
    text = "".join(f"; {c.name!r} stands by (priority {c.priority})" for c in standbys)
    if ties:
        text += (f"; {', '.join(repr(c.name) for c in ties)} also ask(s) to be selected "
                 "with the same priority as another selected relay: SelectionConflict "
                 "(give a standby a higher spec.priority - lower is preferred - or set "
                 "selected: false)")
    return text
