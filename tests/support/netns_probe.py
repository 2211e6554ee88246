"""Run one connection test inside a network namespace of our own (``unshare -rmn``).

Some failures cannot be produced on the shared loopback without touching the machine's
network: a DNS name that does not exist (NXDOMAIN), a resolver that fails (SERVFAIL), a
network with no route (ENETUNREACH), a host that is unreachable (EHOSTUNREACH).  In a
fresh user + mount + network namespace we own everything: only ``lo`` exists, a real DNS
server (dnslib) answers on 127.0.0.1:53, ``/etc/resolv.conf`` is bind-mounted to point at
it, and ``ip route add unreachable`` makes a prefix unreachable.  No packet leaves the
namespace.  The verdict is printed as JSON on stdout.

Usage (from a test): :func:`probe_in_netns`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def probe_in_netns(spec: dict[str, Any], *, servfail: tuple[str, ...] = (),
                   unreachable: tuple[str, ...] = (), timeout: float = 60) -> dict[str, Any]:
    """The verdict (as JSON) of ``spec`` probed inside a fresh network namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise AssertionError("util-linux unshare is required for the namespace tests")
    config = {"spec": spec, "servfail": list(servfail), "unreachable": list(unreachable)}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([unshare, "-rmn", sys.executable, "-m", "tests.support.netns_probe",
                           json.dumps(config)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _setup(servfail: list[str], unreachable: list[str]) -> Any:
    from dnslib import RCODE
    from dnslib.server import BaseResolver, DNSServer

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for prefix in unreachable:
        subprocess.run(["ip", "route", "add", "unreachable", prefix], check=True)

    class Resolver(BaseResolver):  # type: ignore[misc]
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            name = str(request.q.qname).rstrip(".")
            reply.header.rcode = RCODE.SERVFAIL if name in servfail else RCODE.NXDOMAIN
            return reply

    server = DNSServer(Resolver(), port=53, address="127.0.0.1")
    server.start_thread()
    conf = Path(tempfile.mkdtemp()) / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True)
    return server


def _main() -> None:
    import asyncio

    from reconciler.probe import EgressPolicy, run_probe
    from reconciler.probe.verdict import ProbeCredentials
    from reconciler.resources import ExternalSmtp

    config = json.loads(sys.argv[1])
    server = _setup(config["servfail"], config["unreachable"])
    try:
        res = ExternalSmtp.model_validate({
            "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": "netns"}, "spec": config["spec"]})
        verdict = asyncio.run(run_probe(res.spec, ProbeCredentials(),
                                        policy=EgressPolicy.from_strings()))
    finally:
        server.stop()
    print(json.dumps({"passed": verdict.passed, "stage": verdict.stage,
                      "reason": verdict.reason, "message": verdict.message,
                      "action": verdict.action, "retryable": verdict.retryable}))


if __name__ == "__main__":
    _main()
