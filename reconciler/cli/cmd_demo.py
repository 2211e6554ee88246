"""``smtpctl demo``: a real relay and token endpoint on loopback, and the whole story.

See ``reconciler/demo/story.py``.  Finishes in seconds, leaves no process behind (the
servers run in threads of this process and are stopped before it exits).
"""

from __future__ import annotations

import argparse

HELP = "run the demo: real loopback relays, apply, select, a failed update, a rotation"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", metavar="DIR",
                        help="keep the demo's manifests, secrets and state here (new or "
                        "empty directory); default: a temporary directory, removed")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (to run the suggested commands)")


def run(args: argparse.Namespace) -> int:
    from reconciler.demo.story import play

    return play(args.workdir, keep=args.keep)
