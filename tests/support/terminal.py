"""Start ``smtpctl`` the way a user at a terminal does: Ctrl-C (SIGINT) reaches it.

A process started from a non-interactive shell's background job (``./dev test &``, some CI
steps) inherits SIGINT *ignored*, and Python then installs no ``KeyboardInterrupt``
handler: the tests that press Ctrl-C on ``smtpctl ... --watch`` hung there and failed. The
child restores Python's own handler before it runs the CLI, as an interactive shell's
child would have it.
"""

from __future__ import annotations

import sys

_ENTRY = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "runpy.run_module('reconciler', run_name='__main__', alter_sys=True)")


def smtpctl(*args: str) -> list[str]:
    """The command line of ``python -m reconciler ARGS`` with SIGINT as at a terminal."""
    return [sys.executable, "-c", _ENTRY, *args]
