"""``smtpctl describe TYPE NAME... | TYPE/NAME...``: conditions, active vs latest
generation, the last test with stage timings and its redacted transcript, the test history
and recent events.  ``-o json|yaml``: the same in the result envelope (``object``,
``tests``, ``events`` per item)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli.cluster import add_cluster_options, cluster_errors, wants_cluster
from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_namespace_options,
    add_output,
    add_store_options,
    worst,
)
from reconciler.cli.localcmd import NoStore, fail_usage, object_json, open_for_read

HELP = "show resources in detail: conditions, last-known-good, last test, history"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TYPE NAME... | TYPE/NAME...",
                        help="externalsmtp (esmtp) or oauth2provider (oauth2p) and names")
    add_namespace_options(parser)
    add_output(parser, ("text", "json", "yaml"))
    add_store_options(parser)
    add_cluster_options(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.names import LookupProblem, NameError_, find, parse_targets
    from reconciler.cli.output import Result

    try:
        targets = parse_targets(args.targets, default=None)
    except NameError_ as exc:
        return fail_usage(str(exc))
    if any(t.name is None for t in targets):
        return fail_usage("give a name: describe TYPE NAME or TYPE/NAME")
    namespace = None if args.all_namespaces else args.namespace
    kinds = list(dict.fromkeys(k for t in targets for k in t.kinds))
    result = Result("describe")
    code = EXIT_OK
    found: list[tuple[Any, list[dict[str, Any]], list[Any]]] = []
    if wants_cluster(args):
        from reconciler.cli.cluster import describe_object, list_objects

        with cluster_errors() as failed:
            objs = list_objects(args, kinds, None)
            for t in targets:
                try:
                    obj = find(objs, t.kinds, str(t.name), namespace)
                except LookupProblem as exc:
                    code = worst(code, _missing(result, exc, args.output))
                    continue
                found.append(describe_object(args, obj.ref))
        if failed:
            return EXIT_USAGE
    else:
        try:
            store = open_for_read(args)
        except NoStore as exc:
            return fail_usage(str(exc))
        try:
            objs = [o for k in kinds for o in store.list_sync(k)] if store else []
            for t in targets:
                try:
                    obj = find(objs, t.kinds, str(t.name), namespace)
                except LookupProblem as exc:
                    code = worst(code, _missing(result, exc, args.output))
                    continue
                assert store is not None
                found.append((obj, store.tests_sync(obj.ref), store.events_sync(obj.ref)))
        finally:
            if store is not None:
                store.close()
    if args.output in ("json", "yaml"):
        for obj, tests, events in found:
            result.item(obj.ref.kind, obj.ref.namespace, obj.ref.name,
                        object=object_json(obj), tests=tests,
                        events=[_event_json(e) for e in events])
        result.summary = {"found": len(found), "notFound": len(targets) - len(found)}
        return result.emit(args.output, code)
    width = _width()
    sys.stdout.write("\n".join(render(obj, tests, events, width=width)
                               for obj, tests, events in found))
    return code


def _missing(result: Any, exc: Exception, fmt: str) -> int:
    result.error(str(exc))
    if fmt == "text":
        print(f"smtpctl: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _event_json(e: Any) -> dict[str, Any]:
    return {"type": e.type, "reason": e.reason, "message": e.message, "time": e.at}


def _width() -> int | None:
    """The terminal's width when stdout is one (long messages wrap between words)."""
    import os
    import shutil

    from reconciler.cli.localcmd import is_tty

    if not is_tty(sys.stdout):
        return None
    return max(40, shutil.get_terminal_size((int(os.environ.get("COLUMNS", "100")), 24))
               .columns)


def render(obj: Any, tests: list[dict[str, Any]], events: list[Any], *,
           width: int | None = None) -> str:
    """The text form; with ``width``, long lines wrap between words with a hanging indent
    (a terminal would otherwise cut words in two)."""
    from reconciler.resources import format_duration

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
        from reconciler.engine.active import describe_lines

        w(f"Spec:         {spec.get('host')}:{spec.get('port')} "
          f"auth={spec.get('authentication')} startTLS={spec.get('startTLS', False)} "
          f"selected={spec.get('selected', False)} priority={spec.get('priority', 0)}")
        out.extend(describe_lines(st.get("active"), obj.generation))
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
          f"reason {last.get('reason')}, {format_duration(last.get('durationSeconds') or 0)}")
        if last.get("message"):
            w(f"  {last['message']}")
        stages = last.get("stageSeconds") or {}
        if stages:
            w("  Stages: " + ", ".join(f"{k} {format_duration(stages[k])}"
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
    if width:
        out = [w2 for line in out for w2 in _wrap(line, width)]
    return "\n".join(out) + "\n"


def _wrap(line: str, width: int) -> list[str]:
    import textwrap

    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [line]


def _stage_order(stage: str) -> int:
    """Stages in the order a test goes through them (the store keeps them sorted by name)."""
    from typing import get_args

    from reconciler.resources import Stage

    order = get_args(Stage)
    return order.index(stage) if stage in order else len(order)
