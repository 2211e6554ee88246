"""The options every command shares, defined once (docs/cli.md, "Conventions").

A flag that means the same thing in several commands is added by one function here, so
its name, default and help text cannot drift: ``-f`` (:func:`add_input_options`), ``-n``/
``-A`` (:func:`add_namespace_options`), ``-o`` (:func:`add_output`), ``--state``
(:func:`add_store_options`).  Flags about *what a manifest may make smtpctl read* (the
local trust model) go into :func:`add_trust_options`, which every manifest-reading command
calls through :func:`add_input_options`.

Imports only ``argparse`` and ``os`` (no pathlib, no dataclasses: milliseconds at import):
``smtpctl validate`` starts through this module.
"""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

EXIT_OK = 0
EXIT_FAILED = 1  # the thing checked is invalid, or failed (a test, NotFound, not Ready)
EXIT_USAGE = 2  # usage or I/O error: nothing was done
EXIT_CHANGES = 3  # `plan` / `apply --dry-run`: something would change

EXIT_CODES = {
    EXIT_OK: "success: valid, passed, Ready, nothing pending",
    EXIT_FAILED: "the thing checked is invalid or failed: invalid input, a failed test, a "
                 "resource changed by this run that is not Ready, not found, nothing selected",
    EXIT_USAGE: "usage or I/O error: bad flags or arguments, unreadable input, lock timeout, "
                "unreachable cluster; nothing was done",
    EXIT_CHANGES: "`plan` and `apply --dry-run`: valid, and something would change",
}
"""The one meaning of every exit code (docs/cli.md is generated from this table)."""


def worst(*codes: int) -> int:
    """Combine exit codes: usage (2) wins over failed (1), over changes (3), over ok (0)."""
    rank = {EXIT_USAGE: 3, EXIT_FAILED: 2, EXIT_CHANGES: 1, EXIT_OK: 0}
    return max(codes, key=lambda c: rank.get(c, 4), default=EXIT_OK)


# --- manifests ---------------------------------------------------------------------------


def add_files(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "-f", "--filename", dest="files", action="extend", nargs="+", required=required,
        default=None, metavar="PATH",
        help="manifests: files, directories (recursive *.yaml|*.yml|*.json, hidden entries "
        "skipped), quoted globs ('deploy/**/*.yaml') or - for stdin; several per -f, "
        "repeatable",
    )


def add_input_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Every command that reads manifests: ``-f``, ``--allow-status``, the trust flags."""
    add_files(parser, required=required)
    parser.add_argument("--allow-status", action="store_true",
                        help="accept a status section (output of `smtpctl get -o yaml` or "
                        "`kubectl get -o yaml`); it is ignored")
    add_trust_options(parser)


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """Flags of the local trust model (what a manifest may make smtpctl read).

    Called for every manifest-reading command by :func:`add_input_options`; owned by the
    credentials layer's trust model (docs/security.md)."""
    from reconciler.cli.trust import add_trust_options as add_trust

    add_trust(parser)


# --- namespaces, output, state -----------------------------------------------------------


NAMESPACE_HELP = "only this namespace (default: every namespace; a NAME must then be unique)"
NAMESPACE_MANIFEST_HELP = ("namespace of manifests without metadata.namespace (default: "
                           "default); a manifest with another namespace is an error")


def add_namespace_options(parser: argparse.ArgumentParser, *, all_flag: bool = True,
                          manifests: bool = False) -> None:
    """``-n``: for commands that look objects up, the namespace rule (docs/cli.md); for
    commands that read manifests (``manifests=True``), the namespace they go into."""
    parser.add_argument("-n", "--namespace", default=None, metavar="NS",
                        help=NAMESPACE_MANIFEST_HELP if manifests else NAMESPACE_HELP)
    if all_flag:
        parser.add_argument("-A", "--all-namespaces", action="store_true",
                            help="every namespace (the default without -n)")


def add_output(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    parser.add_argument("-o", "--output", choices=choices, default=choices[0],
                        help=f"output format: {', '.join(choices)} (default {choices[0]})")


STATE_DIR_NAME = ".smtpctl"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", default=None, metavar="DIR",
        help="state directory of the local store (default: $SMTPCTL_STATE, else the nearest "
        f"{STATE_DIR_NAME} in this directory or a parent, else ./{STATE_DIR_NAME})",
    )


add_state = add_store_options  # the name the commands used before


class StateDir(NamedTuple):
    path: str
    explicit: bool  # --state or $SMTPCTL_STATE: the user named it
    origin: str  # "--state", "SMTPCTL_STATE", "found", "default"

    @property
    def exists(self) -> bool:
        # A path that exists but is no directory is not "missing": opening it reports it.
        return os.path.exists(self.path)

    def missing_message(self) -> str:
        return (f"state directory {self.path} (from {self.origin}) does not exist "
                "(`smtpctl apply` creates it; check the spelling)")


def state_dir(args: argparse.Namespace) -> StateDir:
    """Where the local store lives (the rule of :func:`add_store_options`)."""
    given = getattr(args, "state", None)
    if given:
        return StateDir(given, True, "--state")
    env = os.environ.get("SMTPCTL_STATE")
    if env:
        return StateDir(env, True, "SMTPCTL_STATE")
    here = os.getcwd()
    while True:
        candidate = os.path.join(here, STATE_DIR_NAME)
        if os.path.isdir(candidate):
            return StateDir(candidate, False, "found")
        parent = os.path.dirname(here)
        if parent == here:
            return StateDir(STATE_DIR_NAME, False, "default")
        here = parent
