"""The ``smtpctl`` command line (the top layer: parse, call, render)."""
