"""Small pieces shared by the command modules (exit codes, common options)."""

from __future__ import annotations

import argparse
import os

EXIT_OK = 0
EXIT_FAILED = 1  # the thing checked is invalid, or a test failed
EXIT_USAGE = 2  # usage or I/O error
EXIT_CHANGES = 3  # `plan`: something would change (like terraform -detailed-exitcode)


def add_files(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "-f", "--filename", dest="files", action="append", required=required, default=None,
        metavar="PATH", help="file, directory (recursive *.yaml|*.yml|*.json) or - for stdin; "
        "repeatable",
    )


def add_output(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    parser.add_argument("-o", "--output", choices=choices, default=choices[0],
                        help=f"output format (default {choices[0]})")


def add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", default=os.environ.get("SMTPCTL_STATE", ".smtpctl"), metavar="DIR",
        help="state directory of the embedded store (env SMTPCTL_STATE, default ./.smtpctl)",
    )
