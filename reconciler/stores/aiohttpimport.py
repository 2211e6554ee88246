"""Import aiohttp without the two CA-bundle loads it does at import.

aiohttp's ``connector`` module builds its fallback SSL contexts when it is imported - one
with ``ssl.create_default_context()``, one unverified that still calls
``set_default_verify_paths()`` - and each parses the system CA file: ~25 ms apiece, 0.05 s
of the operator's 0.45 s from process start to its first request.  smtpctl never uses
them: :class:`~reconciler.stores.kubeapi.KubeApi` hands its own context (the cluster CA,
or what the kubeconfig says) to every ``https`` connection and ``http://`` servers use
none; the OAuth and probe clients build their own contexts.

So :func:`import_aiohttp` imports aiohttp with ``SSL_CERT_FILE`` (OpenSSL's documented
override of the default CA file) pointed at an empty file, and restores the variable right
after.  The default CA *directory* (``SSL_CERT_DIR``) is left alone: should anything use
those two contexts after all, they still verify against the system's hashed CA directory
where there is one (looked up per certificate, when needed).  The environment is the
process's, so this is done only while the calling thread is the only one (a command's
start, before any thread exists); otherwise - or when aiohttp is already imported - it
imports aiohttp as usual.  ``tests/test_dependency_contracts.py`` states what aiohttp must
do for this to pay.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

CA_FILE_ENV = "SSL_CERT_FILE"


def import_aiohttp() -> bool:
    """Import aiohttp; True when its import-time CA loads were skipped (see the module
    doc), False when it was imported already or another thread is running."""
    if "aiohttp" in sys.modules or threading.active_count() > 1:
        importlib.import_module("aiohttp")
        return False
    saved = os.environ.get(CA_FILE_ENV)
    os.environ[CA_FILE_ENV] = os.devnull
    try:
        importlib.import_module("aiohttp")
    finally:
        if saved is None:
            os.environ.pop(CA_FILE_ENV, None)
        else:
            os.environ[CA_FILE_ENV] = saved
    return True
