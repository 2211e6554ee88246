"""The operator's event loop (``smtpctl operator --event-loop auto|uvloop|asyncio``).

uvloop is a dependency of the ``operator`` extra (and of the test extra): the default
(``auto``) runs the operator on it, ``asyncio`` on the standard library's loop, and asking
for uvloop where it is not installed is a usage error, never a silent fallback.  Every
other operator test runs the default, so the whole operator suite runs on uvloop; the
e2e test here runs one relay to Ready on the standard library's loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli.cmd_operator import new_event_loop
from reconciler.devservers.smtp import RelayServer
from reconciler.runtimes.operator.main import loop_kind
from tests.support.kube_operator import (
    ROOT,
    Cluster,
    OperatorProcess,
    condition,
    relay_cluster,
    relay_spec,
    wait_for,
)

NS = "mail"
USER = "user@example.test"


def _close(loop: asyncio.AbstractEventLoop) -> str:
    try:
        return loop_kind(loop)
    finally:
        loop.close()


def test_the_default_loop_is_uvloop_and_asyncio_can_be_chosen() -> None:
    import uvloop  # a dependency of the operator and test extras: missing fails

    auto = new_event_loop("auto")
    assert isinstance(auto, uvloop.Loop)
    assert _close(auto) == "uvloop"
    assert _close(new_event_loop("uvloop")) == "uvloop"
    plain = new_event_loop("asyncio")
    assert not isinstance(plain, uvloop.Loop)
    assert _close(plain) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "not installed": import fails
    assert _close(new_event_loop("auto")) == "asyncio"
    with pytest.raises(ImportError):
        new_event_loop("uvloop")
    # The command says so and exits 2 before connecting to anything.
    code = ("import sys; sys.modules['uvloop'] = None\n"
            "from reconciler.cli.main import main\n"
            "sys.exit(main(['operator', '--event-loop', 'uvloop', '--kubeconfig', "
            "'/nonexistent/kubeconfig']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "uvloop is not installed" in out.stdout + out.stderr
    assert "connecting" not in out.stdout + out.stderr


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[Cluster, RelayServer]]:
    with relay_cluster(tmp_path, NS) as (c, relay):
        yield c, relay


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_relay_gets_ready_on_either_loop(env: tuple[Cluster, RelayServer], kind: str) -> None:
    c, relay = env
    c.create_smtp(NS, "first", relay_spec(relay.port))
    with OperatorProcess(c, f"op-{kind}", "--namespace", NS, "--event-loop", kind) as op:
        wait_for("first Ready", lambda: condition(c.smtp(NS, "first"), "Ready")
                 .get("status") == "True")
        started = [r for r in op.logs() if r.get("msg") == "connecting"]
        assert started and started[0].get("loop") == kind, started
    assert relay.connections >= 1
