"""``python -m reconciler`` is ``smtpctl``."""

from reconciler.cli.main import entry

entry()
