"""``smtpctl`` entry point: a tiny dispatcher that imports only the chosen command.

Start-up time is a feature (CI runs ``smtpctl validate`` on every push), so this module
imports nothing but ``argparse`` and ``importlib``; each command lives in its own module
that imports its heavy dependencies (SMTP, OAuth, Kubernetes) only when it runs.

A command module defines ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol, cast

from reconciler.cli.common import EXIT_CODES, EXIT_USAGE
from reconciler.gctune import tune_gc

# command name -> module; the order is the order of `smtpctl --help`.
COMMANDS: dict[str, str] = {
    "validate": "reconciler.cli.cmd_validate",
    "plan": "reconciler.cli.cmd_plan",
    "apply": "reconciler.cli.cmd_apply",
    "get": "reconciler.cli.cmd_get",
    "describe": "reconciler.cli.cmd_describe",
    "delete": "reconciler.cli.cmd_delete",
    "test": "reconciler.cli.cmd_test",
    "reconcile": "reconciler.cli.cmd_reconcile",
    "oauth": "reconciler.cli.cmd_oauth",
    "operator": "reconciler.cli.cmd_operator",
    "demo": "reconciler.cli.cmd_demo",
    "dev": "reconciler.cli.cmd_dev",
    "init": "reconciler.cli.cmd_init",
    "import": "reconciler.cli.cmd_import",
}


class CommandModule(Protocol):
    HELP: str

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


EXTRAS = {
    "pydantic": "cli", "pydantic_core": "cli", "aiosmtplib": "cli", "tenacity": "cli",
    "authlib": "cli", "httpx": "cli", "aiohttp": "cli", "rich": "cli", "cryptography": "cli",
    "kubernetes": "kube",
    "urllib3": "kube", "prometheus_client": "operator", "aiosmtpd": "demo", "trustme": "demo",
}
"""Third-party module -> the extra that installs it (pyproject.toml)."""


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    return EXTRAS.get(top)


def _load(name: str) -> CommandModule | None:
    try:
        return cast(CommandModule, importlib.import_module(COMMANDS[name]))
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name]:
            return None  # command not built yet
        raise


def _needs(name: str, exc: ModuleNotFoundError) -> int:
    extra = missing_extra(exc)
    if extra is None:
        raise exc
    print(f"smtpctl {name} needs {exc.name}, which this installation does not have: "
          f"pip install 'smtpctl[{extra}]' (or smtpctl[all])", file=sys.stderr)
    return EXIT_USAGE


def _top_usage() -> str:
    import textwrap

    def fill(text: str, indent: int) -> list[str]:  # 80 columns, never inside a word
        return textwrap.wrap(text, 79, subsequent_indent=" " * indent,
                             break_long_words=False, break_on_hyphens=False)

    lines = ["usage: smtpctl COMMAND [options]", "", "commands:"]
    for name in COMMANDS:
        try:
            mod = _load(name)
        except ModuleNotFoundError:  # a command of an extra that is not installed
            lines += fill(f"  {name:<10} (needs an extra: smtpctl[all])", 13)
            continue
        if mod is not None:
            lines += fill(f"  {name:<10} {mod.HELP}", 13)
    lines += ["", *fill("Run `smtpctl COMMAND --help` for a command's options; docs/cli.md "
                        "for the conventions they share.", 0), "", "exit codes:"]
    for code, text in EXIT_CODES.items():
        lines += fill(f"  {code}  {text}", 5)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # No pydantic plugins in smtpctl's processes (docs/cli.md): pydantic otherwise reads the
    # entry points of every installed distribution at its first model (~8-10 ms of each
    # start that builds the resource models; more with more packages installed).  A value
    # set by the user is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_usage())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"smtpctl {version('smtpctl')}")
        return 0
    name = args[0]
    try:
        mod = _load(name) if name in COMMANDS else None
    except ModuleNotFoundError as exc:
        return _needs(name, exc)
    if mod is None:
        print(f"smtpctl: unknown command {name!r}\n\n{_top_usage()}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser(name, mod)
    try:
        ns = parser.parse_args(args[1:])
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return mod.run(ns)
    except ModuleNotFoundError as exc:
        return _needs(name, exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # A damaged or untrusted state directory found at any point of any command is a
        # clear message and exit 2, never a traceback (imported here: startup stays light).
        from reconciler.stores.base import StoreError

        if isinstance(exc, StoreError):
            print(f"smtpctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


def build_parser(name: str, mod: CommandModule | None = None) -> argparse.ArgumentParser:
    """The argparse parser of one command (docs/cli.md is generated from these)."""
    mod = mod or _load(name)
    assert mod is not None, name
    parser = argparse.ArgumentParser(prog=f"smtpctl {name}", description=mod.HELP,
                                     formatter_class=_Formatter)
    mod.configure(parser)
    return parser


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without ``shutil`` (which pulls in bz2/lzma/zlib: ~2.5 ms
    of every start, because add_argument builds a formatter even when no help is shown)."""

    def __init__(self, prog: str) -> None:
        import os

        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            width = 80
        super().__init__(prog, width=max(40, width - 2))


def entry() -> None:
    """The console script: :func:`main`, and a Ctrl-C at any point of it (while the
    command's module is imported or its arguments parsed, not only while it runs) is the
    one line ``interrupted`` and exit 130, never a traceback.  Cyclic garbage is
    collected less often in this process (:func:`reconciler.gctune.tune_gc`)."""
    tune_gc()
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if getattr(sys.modules.get("__main__"), "entry", None) is entry:
        # This process is smtpctl (its console script, ``python -m reconciler``), not a
        # program that called entry() (a test): nothing runs after us.
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` as :func:`sys.exit` would, less the interpreter's
    teardown: the exit handlers run (``atexit``: logging's flush, coverage's data, ...)
    and the output is flushed, but the objects and modules are not freed one by one (a
    first apply of 1,000 relays spent ~30-40 ms on that after its report, for nothing).
    Python's own exit whenever that would not be the same: another thread still running
    (Python would wait for it), or the output cannot be flushed (a closed pipe: Python
    reports it and exits 120)."""
    import atexit
    import contextlib
    import os

    threading = sys.modules.get("threading")
    if threading is not None and any(
            t.is_alive() and not t.daemon and t is not threading.main_thread()
            for t in threading.enumerate()):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):  # what the handlers printed, if any
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
