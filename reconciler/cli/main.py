"""``smtpctl`` entry point: a tiny dispatcher that imports only the chosen command.

Start-up time is a feature (CI runs ``smtpctl validate`` on every push), so this module
imports nothing but ``argparse`` and ``importlib``; each command lives in its own module
that imports its heavy dependencies (SMTP, OAuth, Kubernetes) only when it runs.

A command module defines ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from reconciler.cli.common import EXIT_CODES, EXIT_USAGE

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


def _load(name: str) -> CommandModule | None:
    try:
        return cast(CommandModule, importlib.import_module(COMMANDS[name]))
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name]:
            return None  # command not built yet
        raise


def _top_usage() -> str:
    import textwrap

    def fill(text: str, indent: int) -> list[str]:  # 80 columns, never inside a word
        return textwrap.wrap(text, 79, subsequent_indent=" " * indent,
                             break_long_words=False, break_on_hyphens=False)

    lines = ["usage: smtpctl COMMAND [options]", "", "commands:"]
    for name in COMMANDS:
        mod = _load(name)
        if mod is not None:
            lines += fill(f"  {name:<10} {mod.HELP}", 13)
    lines += ["", *fill("Run `smtpctl COMMAND --help` for a command's options; docs/cli.md "
                        "for the conventions they share.", 0), "", "exit codes:"]
    for code, text in EXIT_CODES.items():
        lines += fill(f"  {code}  {text}", 5)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_usage())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"smtpctl {version('smtpctl')}")
        return 0
    name = args[0]
    mod = _load(name) if name in COMMANDS else None
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def build_parser(name: str, mod: CommandModule | None = None) -> argparse.ArgumentParser:
    """The argparse parser of one command (docs/cli.md is generated from these)."""
    mod = mod or _load(name)
    assert mod is not None, name
    parser = argparse.ArgumentParser(prog=f"smtpctl {name}", description=mod.HELP)
    mod.configure(parser)
    return parser


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
