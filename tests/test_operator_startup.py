"""What the operator imports before its first pass (issue 15: start-up is part of every
first pass's time to Ready).

Building the operator's parts must not import the OAuth stack (httpx, authlib, joserfc:
~0.16 s): a fleet of password relays never needs it, and it used to be imported between
taking the Lease and listing the resources, on the way to the first connection test.
A fresh interpreter, so that no other test's imports count.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import asyncio, sys
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.main import build
from reconciler.runtimes.operator.settings import OperatorConfig
from reconciler.stores.kubeapi import Credentials

async def main() -> None:
    parts = build(OperatorConfig(namespaces=["default"]), OperatorMetrics(),
                  Credentials(server="https://127.0.0.1:1"), version_key=b"k" * 32)
    print("oauth after build:", "reconciler.credentials.oauth" in sys.modules)
    print("httpx after build:", "httpx" in sys.modules)
    await parts.api.close()
    await parts.controller.world.aclose()

asyncio.run(main())
"""


def test_building_the_operator_leaves_the_oauth_stack_unimported() -> None:
    """Before the fix ``build_world`` returned ``live.tokens`` - a property that creates
    the token manager - so every operator imported the OAuth stack at start (this test
    failed: ``oauth after build: True``)."""
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "oauth after build: False" in out, out
    assert "httpx after build: False" in out, out


# The operator's start as `smtpctl operator` runs it, stopped by a usage error found right
# after the imports (the renew deadline must be shorter than the lease); then what aiohttp's
# import-time SSL contexts hold, and what a default context of this process still loads.
CA_CODE = """
import os, ssl, sys
from reconciler.cli.main import main
before = os.environ.get("SSL_CERT_FILE")
code = main(["operator", "--lease-duration", "5", "--renew-deadline", "10"])
import aiohttp.connector as connector
print("exit", code)
print("aiohttp verified CAs", connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
print("aiohttp unverified CAs",
      connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"])
print("default context CAs", ssl.create_default_context().cert_store_stats()["x509_ca"])
print("SSL_CERT_FILE restored", os.environ.get("SSL_CERT_FILE") == before)
"""


def _ca_run(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", CA_CODE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True, env=env).stdout
    rows = [line.rsplit(" ", 1) for line in out.splitlines()]
    return {k: v for k, v in rows}


def test_the_operator_imports_aiohttp_without_loading_the_ca_bundle_twice() -> None:
    """aiohttp builds two fallback SSL contexts at import, each parsing the system CA file
    (~25 ms apiece of the operator's start-up); the operator never uses them (its client
    passes the cluster CA's context).  Before ``import_operator`` both held every system
    CA (this test failed: ``aiohttp verified CAs`` was the system's count); the default
    contexts the rest of the process builds - a relay test against a public CA - still
    load the system CAs, and ``SSL_CERT_FILE`` is as it was, unset or set."""
    import os
    import ssl

    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert system > 0, "this test needs the system CA bundle (ca-certificates)"
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    got = _ca_run(env)
    assert got == {"exit": "2", "aiohttp verified CAs": "0", "aiohttp unverified CAs": "0",
                   "default context CAs": str(system), "SSL_CERT_FILE restored": "True"}, got
    # An administrator's own CA file (SSL_CERT_FILE) is restored too, and still used.
    cafile = ssl.get_default_verify_paths().cafile
    assert cafile is not None
    got = _ca_run({**env, "SSL_CERT_FILE": cafile})
    assert got["aiohttp verified CAs"] == "0", got
    assert got["default context CAs"] == str(system), got
    assert got["SSL_CERT_FILE restored"] == "True", got


def test_aiohttp_is_imported_as_usual_while_another_thread_runs() -> None:
    """The environment is the process's: with another thread running (it could build a
    default context meanwhile), aiohttp is imported without touching ``SSL_CERT_FILE``."""
    code = (
        "import threading\n"
        "from reconciler.stores.aiohttpimport import import_aiohttp\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait); t.start()\n"
        "print(import_aiohttp())\n"
        "stop.set(); t.join()\n"
        "import aiohttp.connector as c\n"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'] > 0)\n"
        "print(import_aiohttp())\n")  # imported already: nothing to do
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["False", "True", "False"], out
