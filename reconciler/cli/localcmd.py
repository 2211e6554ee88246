"""Helpers shared by the local-store commands (apply, plan, get, describe, delete, ...).

Rendering lives here so every command prints resources the same way: a rich table on a
terminal, aligned plain text otherwise (pipes, CI logs), JSON/YAML for machines.  Status
is rendered from the store, which never holds a secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from reconciler.cli.common import EXIT_USAGE
from reconciler.stores.base import StoredObject, StoreError

if TYPE_CHECKING:
    from reconciler.stores.local import LocalStore

# The store and the engine's conditions are imported where used: `apply` imports this
# module for its options, and starts its probe workers before it loads the resource
# models (pydantic) that those modules pull in (reconciler/cli/cmd_apply.py).


def kind_of(word: str) -> str | None:
    """The kind a resource word names (the CRDs' names; see reconciler.cli.names)."""
    from reconciler.cli.names import kind_of as _kind_of

    return _kind_of(word)


def add_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=16, metavar="N",
                        help="connection tests at once, overall (default 16)")
    parser.add_argument("--per-host", type=int, default=4, metavar="N",
                        help="connection tests at once against one host (default 4)")
    parser.add_argument("--min-refresh-interval", default="1m", metavar="DURATION",
                        help="never re-verify a relay more often than this, whatever its "
                        "refreshInterval says (default 1m; a test is a login)")


# --probe-workers auto: worker processes pay off from about this many resources (each
# costs a Python start and the probe's imports, a few tenths of a second of CPU).
AUTO_WORKERS_FROM = 200


def _workers(value: str) -> str:
    if value != "auto" and not (value.isdigit() and int(value) <= 64):
        raise argparse.ArgumentTypeError(f"expected auto or 0..64, got {value!r}")
    return value


def add_probe_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe-workers", default="auto", metavar="N", type=_workers,
                        help="run connection tests in N worker processes, or auto (the "
                        "default: one per CPU beyond the first, at most 4, when "
                        f"{AUTO_WORKERS_FROM} or more resources are applied); 0: in this "
                        "process")


def probe_workers(args: argparse.Namespace, resources: int) -> int:
    """``--probe-workers`` for a run over ``resources`` resources."""
    value = str(getattr(args, "probe_workers", "0"))
    if value == "auto":
        from reconciler.runtimes.probepool import default_workers

        return default_workers() if resources >= AUTO_WORKERS_FROM else 0
    return int(value)


def refresh_floor(args: argparse.Namespace) -> float:
    """``--min-refresh-interval`` in seconds (a usage error when it does not parse)."""
    from reconciler.resources import parse_duration

    try:
        return parse_duration(str(args.min_refresh_interval)).total_seconds()
    except ValueError as exc:
        raise SystemExit(fail_usage(f"--min-refresh-interval: {exc}")) from None


def add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock-timeout", type=float, default=30.0, metavar="S",
                        help="wait this long for another apply on the same state (default 30)")


def open_store(state: str, *, create: bool) -> LocalStore | None:
    from reconciler.stores.local import LocalStore

    try:
        return LocalStore(state, create=create)
    except (StoreError, OSError) as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return None


class NoStore(Exception):
    """An explicitly named state directory that does not exist (exit 2)."""


def open_for_read(args: argparse.Namespace) -> LocalStore | None:
    """The store of ``args`` for a read-only command, or None for "no store yet".

    The default state directory missing is an empty store (nothing applied yet); one the
    user named (``--state``, ``$SMTPCTL_STATE``) missing is a mistake: NoStore."""
    from reconciler.cli.common import state_dir

    sd = state_dir(args)
    if not sd.exists:
        if sd.explicit:
            raise NoStore(sd.missing_message())
        return None
    from reconciler.stores.local import LocalStore

    store = LocalStore(sd.path, create=False)
    return store


def sort_key(obj: StoredObject) -> tuple[int, str, str]:
    """The one row order of every table (get, apply, reconcile): kind, namespace, name."""
    ranks = _kind_ranks()
    ref = obj.ref
    return (ranks.get(ref.kind, len(ranks)), ref.namespace, ref.name)


_RANKS: dict[str, int] = {}


def _kind_ranks() -> dict[str, int]:
    """Kind -> its place in :data:`reconciler.cli.names.RESOURCES` (built once, not once
    per row: the report of a 10,000-relay apply sorted by it)."""
    if not _RANKS:
        from reconciler.cli.names import RESOURCES

        for i, r in enumerate(RESOURCES):
            _RANKS.setdefault(r.kind, i)
    return _RANKS


def run_locked(store: LocalStore, lock_timeout: float, body: Callable[[LocalStore], int]) -> int:
    """Take the store's apply lock, run ``body``, always close the store.

    A lock still held by another apply after ``lock_timeout`` seconds is a usage error
    (exit 2) with the lock's own message."""
    from reconciler.stores.local import LockTimeout

    try:
        try:
            store.lock(lock_timeout)
        except LockTimeout as exc:
            return fail_usage(str(exc))
        return body(store)
    finally:
        store.close()


def fail_usage(message: str) -> int:
    print(f"smtpctl: {message}", file=sys.stderr)
    return EXIT_USAGE


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- rows ---------------------------------------------------------------------------------


def ready_cell(st: dict[str, Any]) -> tuple[str, str]:
    from reconciler.engine import conditions as cond

    c = cond.find(st.get("conditions") or [], cond.READY)
    if c is None:
        return "Unknown", "Pending"
    return str(c.get("status")), str(c.get("reason", ""))


def row(obj: StoredObject, *, tested: str = "", wide: bool = False) -> list[str]:
    st = obj.status
    spec = obj.manifest.get("spec") or {}
    ready, reason = ready_cell(st)
    if obj.ref.kind == "ExternalSmtp":
        host = f"{spec.get('host', '')}:{spec.get('port', '')}"
        auth = str(spec.get("authentication", ""))
        selected = "yes" if st.get("selected") else "-"
    else:
        # The token endpoint's host only: a URL would widen the column for every row
        # (`describe` and `-o wide` show the whole URL).
        url = str(spec.get("tokenEndpoint", ""))
        host = url if wide else _url_host(url)
        auth = str(spec.get("grantType", ""))
        selected = ""
    active = st.get("activeGeneration")
    cells = [f"{obj.ref.namespace}/{obj.ref.name}", _short_kind(obj.ref.kind), host, auth,
             ready, selected, reason]
    if wide:
        cells += [str(obj.generation), "-" if active is None else str(active),
                  str(st.get("lastTestTime", "-"))]
    if tested:
        cells.append(tested)
    return cells


def _short_kind(kind: str) -> str:
    return kind  # as in manifests; `smtpctl get ExternalSmtp` accepts it too


def _url_host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).netloc or url
    except ValueError:
        return url


HEADER = ["NAME", "KIND", "HOST", "AUTH", "READY", "SELECTED", "REASON"]
WIDE = ["GEN", "ACTIVE", "LAST TEST"]


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None
                ) -> None:
    out = out or sys.stdout
    rows = [list(r) for r in rows]
    if is_tty(out) and _plain(header, rows):
        out.write(_tty_table(header, rows))
        return
    if is_tty(out):
        from rich.console import Console
        from rich.table import Table

        # Cells never wrap (a wrapped row is unreadable, a word cut in two worse): on a
        # narrow terminal the widest free-text cells end in an ellipsis instead, and NAME
        # (what you type next) is never shortened.
        table = Table(box=None, pad_edge=False, header_style="bold")
        for h in header:
            natural = max([len(h)] + [len(r[header.index(h)]) for r in rows
                                      if header.index(h) < len(r)])
            table.add_column(h, no_wrap=True, overflow="ellipsis",
                             min_width=natural if h in ("NAME", "READY") else None)
        for r in rows:
            styled = []
            for h, cell in zip(header, r, strict=False):
                if h == "READY":
                    color = {"True": "green", "False": "red"}.get(cell, "yellow")
                    styled.append(f"[{color}]{cell}[/{color}]")
                else:
                    styled.append(cell.replace("[", "\\["))
            table.add_row(*styled)
        Console(file=out).print(table)
        return
    widths = [len(h) for h in header]
    for r in rows:
        for i, cell in enumerate(r[: len(widths)]):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    out.write("\n".join(lines) + "\n")


def _plain(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bool:
    """Every cell printable ASCII: one character, one column (else rich lays it out)."""
    return all(c.isascii() and c.isprintable() for r in (header, *rows) for c in r)


# The terminal's table (print_table), as rich's Table(box=None, pad_edge=False) lays it
# out when it fits (tests/test_cli_table.py compares them), without rich's per-cell
# rendering: rich took ~1 ms per row, a second for the report of a 1,000-relay apply.
_SHRINKS_NEVER = ("NAME", "READY")  # NAME is what you type next; READY is short
_READY_COLOR = {"True": "32", "False": "31"}  # green, red; anything else yellow (33)


def _tty_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table for a terminal: columns two spaces apart, the header bold, READY in
    colour (none with ``NO_COLOR`` set, no styles with ``TERM=dumb``).  Wider than the
    terminal, the widest columns other than NAME and READY lose a character at a time,
    down to one, and a cut cell ends in an ellipsis (cells never wrap)."""
    import os
    import shutil

    n = len(header)
    widths = [len(h) for h in header]
    for r in rows:
        for i, cell in enumerate(r[:n]):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    excess = sum(widths) + 2 * (n - 1) - shutil.get_terminal_size().columns
    shrinkable = [i for i, h in enumerate(header) if h not in _SHRINKS_NEVER]
    while excess > 0 and shrinkable:
        widest = max(shrinkable, key=lambda j: widths[j])
        if widths[widest] <= 1:
            break
        widths[widest] -= 1
        excess -= 1
    styles = os.environ.get("TERM") != "dumb"
    colors = styles and "NO_COLOR" not in os.environ
    ready = header.index("READY") if "READY" in header else -1

    def fit(cell: str, width: int) -> str:
        return cell.ljust(width) if len(cell) <= width else cell[:width - 1] + "\u2026"

    head = "  ".join(fit(h, widths[i]) for i, h in enumerate(header))
    lines = [f"\x1b[1m{head}\x1b[0m" if styles else head]
    for r in rows:
        cells = [fit(c, widths[i]) for i, c in enumerate(r[:n])]
        if colors and 0 <= ready < len(cells):
            cell = r[ready]
            cells[ready] = (f"\x1b[{_READY_COLOR.get(cell, '33')}m{cell}\x1b[0m"
                            + " " * (widths[ready] - len(cell)))
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def object_json(obj: StoredObject) -> dict[str, Any]:
    """The resource as kubectl would show it: manifest + server fields + status."""
    meta = dict(obj.manifest.get("metadata") or {})
    meta.update({"generation": obj.generation, "creationTimestamp": obj.created_at,
                 "uid": obj.uid, "resourceVersion": obj.version})
    out = {k: v for k, v in obj.manifest.items() if k != "metadata"}
    out["metadata"] = meta
    out["status"] = obj.status
    return out


def dump(objs: list[dict[str, Any]], fmt: str, *, single: bool) -> str:
    data: Any = objs[0] if single and len(objs) == 1 else {"apiVersion": "v1", "kind": "List",
                                                             "items": objs}
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))
