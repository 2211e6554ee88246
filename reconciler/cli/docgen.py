"""Generate the reference parts of ``docs/cli.md`` from the argparse parsers.

``docs/cli.md`` is prose written by people with generated blocks in between::

    <!-- BEGIN GENERATED usage:apply -->
    ...
    <!-- END GENERATED usage:apply -->

``python -m reconciler.cli.docgen`` rewrites the blocks in place; ``--check`` exits 1 when
the file is stale (``tests/test_cli_conventions.py`` runs it).  Blocks: ``names`` (the
resource names, from :mod:`reconciler.cli.names`), ``exit-codes``
(:data:`reconciler.cli.common.EXIT_CODES`), ``outputs`` (each command's ``-o`` formats)
and ``usage:COMMAND`` for every command of :data:`reconciler.cli.main.COMMANDS`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED (?P<name>[\w:-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- END GENERATED (?P=name) -->)", re.S)


def parsers() -> dict[str, argparse.ArgumentParser]:
    from reconciler.cli.main import COMMANDS, build_parser

    return {name: build_parser(name) for name in COMMANDS}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def output_formats(parser: argparse.ArgumentParser) -> tuple[str, ...] | None:
    for action in parser._actions:
        if "-o" in action.option_strings:
            if action.choices:
                return tuple(str(c) for c in action.choices)
            help_text = action.help or ""
            return tuple(w.strip(" ;()") for w in help_text.split("(default")[0].split("|")
                         if w.strip(" ;()"))
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def usage_block(name: str, parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=88)
    usage = parser.format_usage().strip().removeprefix("usage: ").replace("\n" + " " * 7, "\n")
    lines = ["```", usage, "```", ""]
    lines += ["| Option | Meaning |", "| --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub, text in ((a.dest, a.help) for a in action._choices_actions):
                lines.append(f"| `{sub}` | {_cell(text or '')} |")
            continue
        if action.option_strings:
            flag = ", ".join(action.option_strings)
            if action.nargs != 0:
                meta = action.metavar or (
                    "{" + ",".join(map(str, action.choices)) + "}" if action.choices
                    else action.dest.upper())
                flag += f" {meta}"
        else:
            flag = str(action.metavar or action.dest)
        lines.append(f"| `{flag}` | {_cell(action.help or '')} |")
    for sub, sp in subparsers(parser).items():
        lines += ["", f"`smtpctl {name} {sub}`:", ""]
        lines.append(usage_block(f"{name} {sub}", sp).rstrip("\n"))
    return "\n".join(lines) + "\n"


def names_block() -> str:
    from reconciler.cli.names import ALL_WORDS, RESOURCES

    lines = ["| Kind | Names on the command line (as the CRDs define them) |", "| --- | --- |"]
    for r in RESOURCES:
        words = [r.singular, r.plural, *r.short_names, f"{r.plural}.smtp.reconciler.dev"]
        lines.append(f"| `{r.kind}` | {', '.join(f'`{w}`' for w in words)} |")
    lines.append(f"| both | {', '.join(f'`{w}`' for w in ALL_WORDS)} (the CRDs' category "
                 "`smtp`) |")
    return "\n".join(lines) + "\n"


def exit_codes_block() -> str:
    from reconciler.cli.common import EXIT_CODES

    lines = ["| Code | Meaning |", "| --- | --- |"]
    lines += [f"| `{code}` | {_cell(text)} |" for code, text in EXIT_CODES.items()]
    return "\n".join(lines) + "\n"


def outputs_block() -> str:
    lines = ["| Command | `-o` formats (the first is the default) |", "| --- | --- |"]
    for name, parser in parsers().items():
        subs = subparsers(parser) or {"": parser}
        for sub, p in subs.items():
            fmts = output_formats(p)
            label = f"{name} {sub}".strip()
            lines.append(f"| `{label}` | "
                         + (", ".join(f"`{f}`" for f in fmts) if fmts else "(no `-o`)") + " |")
    return "\n".join(lines) + "\n"


def render(name: str) -> str:
    if name == "names":
        return names_block()
    if name == "exit-codes":
        return exit_codes_block()
    if name == "outputs":
        return outputs_block()
    if name.startswith("usage:"):
        cmd = name.split(":", 1)[1]
        return usage_block(cmd, parsers()[cmd])
    raise KeyError(name)


def update(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def blocks(text: str) -> list[str]:
    return [m.group("name") for m in _BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = DOC.read_text(encoding="utf-8")
    new = update(text)
    if "--check" in args:
        if new != text:
            print(f"{DOC} is stale: run python -m reconciler.cli.docgen", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
