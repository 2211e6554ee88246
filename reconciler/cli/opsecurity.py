"""The operator's security options: the source allow-list and the egress networks.

Kept apart from ``cmd_operator`` so the tenant boundary is one small module to review
(docs/security.md).  By default the operator resolves only ``secretKeyRef`` references
to Secrets of the resource's own namespace, and connects (SMTP probe, token, revoke and
test endpoints) to neither loopback, link-local, cloud metadata nor IPv4-embedding IPv6
forms of them.  A cluster administrator widens that explicitly:

* ``--allow-env-secret NAME``: ``env: NAME`` may be read (every tenant can then use it);
* ``--allow-file-secret-dir DIR``: ``file:`` below DIR may be read (e.g. a mounted volume);
* ``--allow-egress CIDR`` / ``--deny-egress CIDR``: networks allowed even when denied by
  default, or denied in addition.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from reconciler.cli.trust import egress_arguments

if TYPE_CHECKING:
    from reconciler.credentials.policy import SourcePolicy
    from reconciler.probe.egress import EgressPolicy


def add_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "tenant boundary and egress (see docs/security.md)")
    group.add_argument(
        "--allow-env-secret", action="append", default=[], metavar="NAME",
        help="let env: references read this variable of the operator's environment "
             "(exact name; repeatable; every tenant can then read it). Default: none")
    group.add_argument(
        "--allow-file-secret-dir", action="append", default=[], metavar="DIR",
        help="let file: references read below DIR (repeatable; every tenant can then read "
             "it). Default: none")
    egress_arguments(group)


def security_settings(args: argparse.Namespace) -> tuple[SourcePolicy, EgressPolicy]:
    """The source policy and egress policy of these options; ValueError on a bad CIDR."""
    from reconciler.credentials.policy import SourcePolicy
    from reconciler.probe.egress import EgressPolicy

    for name in args.allow_env_secret:
        if not name or any(c in name for c in "*?[="):
            raise ValueError(f"--allow-env-secret {name!r}: expected an exact variable name")
    policy = SourcePolicy.operator(env=args.allow_env_secret,
                                   file_dirs=args.allow_file_secret_dir)
    try:
        egress = EgressPolicy.from_strings(allow_loopback=bool(args.allow_loopback),
                                           deny=args.deny_egress, allow=args.allow_egress)
    except ValueError:
        raise ValueError("--allow-egress/--deny-egress: expected networks such as "
                         "10.0.0.0/8 or fd00::/8") from None
    return policy, egress
