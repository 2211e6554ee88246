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
