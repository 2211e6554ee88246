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
