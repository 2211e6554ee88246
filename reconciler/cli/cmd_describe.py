"""``smtpctl describe KIND NAME``: conditions, active vs latest generation, the last test
with stage timings and its redacted transcript, the test history and recent events."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli.cluster import add_cluster_options, cluster_errors, wants_cluster
from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_state
from reconciler.cli.localcmd import fail_usage, kind_of, open_store

HELP = "show one resource in detail: conditions, last-known-good, last test, history"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="externalsmtp | oauth2provider")
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    add_state(parser)
    add_cluster_options(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.stores.base import ObjectRef

    kind = kind_of(args.kind)
    if kind is None:
        return fail_usage(f"unknown kind {args.kind!r}")
    ref = ObjectRef(kind, args.namespace, args.name)
    if wants_cluster(args):
        from reconciler.cli.cluster import describe_object

        with cluster_errors() as failed:
            obj, tests, events = describe_object(args, ref)
        if failed:
            return EXIT_USAGE
    else:
        store = open_store(args.state, create=False)
        if store is None:
            return EXIT_USAGE
        try:
            obj = store.get_sync(ref)
            tests = store.tests_sync(ref) if obj is not None else []
            events = store.events_sync(ref) if obj is not None else []
        finally:
            store.close()
    if obj is None:
        print(f"smtpctl: {kind} {args.namespace}/{args.name} not found", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(render(obj, tests, events))
    return EXIT_OK


def render(obj: Any, tests: list[dict[str, Any]], events: list[Any]) -> str:
    st = obj.status
    spec = obj.manifest.get("spec") or {}
    out: list[str] = []
    w = out.append
    w(f"Name:         {obj.ref.name}")
    w(f"Namespace:    {obj.ref.namespace}")
    w(f"Kind:         {obj.ref.kind}")
    w(f"Created:      {obj.created_at}")
    w(f"Generation:   {obj.generation} (observed {st.get('observedGeneration', '-')})")
    if obj.ref.kind == "ExternalSmtp":
        w(f"Spec:         {spec.get('host')}:{spec.get('port')} "
          f"auth={spec.get('authentication')} startTLS={spec.get('startTLS', False)} "
          f"selected={spec.get('selected', False)}")
        active = st.get("active")
        if active:
            same = active.get("generation") == obj.generation
            w(f"Active:       generation {active.get('generation')} "
              f"({active.get('host')}:{active.get('port')}, {active.get('tlsMode')}, "
              f"{active.get('authentication')})"
              + ("" if same else f"  <- latest generation {obj.generation} is not in use"))
        else:
            w("Active:       none (never passed a test)")
        w(f"Selected:     {'yes' if st.get('selected') else 'no'}")
    w("Conditions:")
    for c in st.get("conditions") or []:
        w(f"  {c.get('type'):<12} {c.get('status'):<8} {c.get('reason', '')}  "
          f"(gen {c.get('observedGeneration')}, since {c.get('lastTransitionTime')})")
        if c.get("message"):
            w(f"      {c['message']}")
    if tests:
        last = tests[0]
        w("Last test:")
        w(f"  {'passed' if last.get('passed') else 'FAILED'} at {last.get('at')} "
          f"(generation {last.get('generation')}), stage {last.get('stage')}, "
          f"reason {last.get('reason')}, {last.get('durationSeconds', 0):.3f}s")
        if last.get("message"):
            w(f"  {last['message']}")
        stages = last.get("stageSeconds") or {}
        if stages:
            w("  Stages: " + ", ".join(f"{k} {stages[k] * 1000:.1f}ms"
                                       for k in sorted(stages, key=_stage_order)))
        if last.get("warnings"):
            w("  Warnings: " + ", ".join(last["warnings"]))
        transcript = last.get("transcript") or []
        if transcript:
            w("  Transcript (redacted):")
            for t in transcript[:80]:
                arrow = "C:" if t.get("direction") == "c" else "S:"
                w(f"    {t.get('elapsedSeconds', 0):8.4f} {arrow} {t.get('line')}")
        w("History:")
        for t in tests:
            w(f"  {t.get('at')}  gen {t.get('generation'):<3} "
              f"{'passed' if t.get('passed') else 'failed':<7} {t.get('reason')}")
    if events:
        w("Events:")
        for e in events:
            w(f"  {e.at}  {e.type:<8} {e.reason:<22} {e.message}")
    return "\n".join(out) + "\n"


def _stage_order(stage: str) -> int:
    """Stages in the order a test goes through them (the store keeps them sorted by name)."""
    from typing import get_args

    from reconciler.resources import Stage

    order = get_args(Stage)
    return order.index(stage) if stage in order else len(order)
