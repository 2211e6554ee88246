"""The CLI's trust options: what a manifest may make ``smtpctl`` read (docs/security.md).

Every command that resolves secret references (``test``, ``plan``, ``apply``,
``reconcile``, ``get active --reveal``, ``oauth``) takes the same three opt-ins; each may
also come from an environment variable, so that an interactive shell or a CI job sets
them once.  The defaults are safe for CI running on an untrusted pull request:

* ``file:`` only below the directory of the manifest that holds the reference (not
  through hidden entries such as ``.git/``, not through symbolic links leading out);
* ``env:`` none;
* ``secretKeyRef`` only in the kubeconfig context's namespace.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.credentials.policy import SourcePolicy
    from reconciler.probe.egress import EgressPolicy

# The same names as reconciler.credentials.policy (not imported here: `smtpctl --help`
# imports every command module and must stay light).
ENV_ALLOW_ENV = "SMTPCTL_ALLOW_ENV"
ENV_ALLOW_FILE_ROOT = "SMTPCTL_ALLOW_FILE_ROOT"
ENV_ALLOW_NAMESPACE = "SMTPCTL_ALLOW_NAMESPACE"


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "trust (what a manifest may make smtpctl read; see docs/security.md)")
    group.add_argument(
        "--allow-env", action="append", default=[], metavar="NAME|GLOB",
        help=f"let env: references read this variable (a name or a glob such as 'SMTP_*'; "
             f"repeatable; also {ENV_ALLOW_ENV}=A,B). Default: none")
    group.add_argument(
        "--allow-file-root", action="append", default=[], metavar="DIR",
        help=f"let file: references read below DIR (repeatable; also "
             f"{ENV_ALLOW_FILE_ROOT}=DIR[:DIR]). Default: only below the manifest's directory")
    group.add_argument(
        "--allow-namespace", action="append", default=[], metavar="NS",
        help=f"let secretKeyRef references read Secrets of namespace NS ('*': any; "
             f"repeatable; also {ENV_ALLOW_NAMESPACE}=A,B). Default: the kubeconfig "
             f"context's namespace")


def policy_from_args(args: argparse.Namespace) -> SourcePolicy:
    """The source policy of this invocation: its options plus ``SMTPCTL_ALLOW_*``."""
    from reconciler.credentials.policy import cli_policy

    return cli_policy(env=getattr(args, "allow_env", None) or (),
                      file_roots=getattr(args, "allow_file_root", None) or (),
                      namespaces=getattr(args, "allow_namespace", None) or ())


def add_egress_options(parser: argparse.ArgumentParser) -> None:
    """``--allow-egress`` / ``--deny-egress`` for the commands that connect (``test``,
    ``apply``, ``reconcile``); the operator adds the same two (cli/opsecurity.py)."""
    egress_arguments(parser.add_argument_group(
        "egress (where a manifest may make smtpctl connect; see docs/security.md)"))


def egress_arguments(group: argparse._ArgumentGroup) -> None:
    """The two egress options, defined once for the CLI and the operator."""
    group.add_argument(
        "--allow-egress", action="append", default=[], metavar="CIDR",
        help="connect to this network even if denied by default (e.g. a relay on a "
             "link-local address; repeatable)")
    group.add_argument(
        "--deny-egress", action="append", default=[], metavar="CIDR",
        help="refuse to connect to this network too (repeatable)")


def egress_from_args(args: argparse.Namespace) -> EgressPolicy:
    """The egress policy of this invocation (loopback allowed: the CLI runs on your
    machine); ``ValueError`` naming the options on a malformed network."""
    from reconciler.probe.egress import EgressPolicy

    try:
        return EgressPolicy.from_strings(deny=getattr(args, "deny_egress", None) or (),
                                         allow=getattr(args, "allow_egress", None) or ())
    except ValueError:
        raise ValueError("--allow-egress/--deny-egress: expected a network such as "
                         "10.0.0.0/8 or fd00::/8") from None
