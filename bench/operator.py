"""Operator benchmark against the API emulator: ``./dev bench operator [--count N ...]``.

For each count (default 1000 and 10000) it measures, with a real ``smtpctl operator``
process, a real loopback aiosmtpd relay (STARTTLS + AUTH PLAIN/LOGIN) and the emulator in
its own process:

* **create -> all Ready**: N ExternalSmtp (one Secret each for the password, one CA
  Secret), operator started, time until every resource is ``Ready=True``;
* **restart catch-up**: the operator is stopped and started again; time until it has
  reconciled all N resources, with the number of connection tests (must be 0) and of
  status writes (must be 0) during the catch-up;
* **peak RSS** of the operator process (``VmHWM``) in each phase;
* **API requests per resource per reconcile**, counted at the emulator (every HTTP
  request, including the watches and the Secret reads).

``--unrelated-secrets-mb 0 --unrelated-secrets-mb 10 --unrelated-secrets-mb 100`` instead
measures the operator's peak RSS (cluster-wide mode, 100 resources) with that much Secret
data that no resource references.

Targets from the issue: catch-up of 10,000 unchanged Ready resources in under 60 s with
zero connection tests, under 400 MB RSS at 10,000.  The results are printed as a table
and as JSON (``--json PATH``), with the ratio to each target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.devservers.smtp import RelayServer  # noqa: E402
from tests.support.kube_operator import standin_crd  # noqa: E402

GROUP, VERSION = "smtp.reconciler.dev", "v1alpha1"
NS = "bench"
USER = "bench@example.test"
PASSWORD = "bench-password-not-a-secret"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Emulator:
    """The strict emulator (HTTPS, admin token) in its own process."""

    def __init__(self, work: Path) -> None:
        crd_dir = ROOT / "manifests" / "crds"
        args = [sys.executable, "-m", "tests.support.kube_emulator",
                "--workdir", str(work / "emulator")]
        self.generated_crds = crd_dir.is_dir() and any(crd_dir.glob("*.yaml"))
        if self.generated_crds:
            args += ["--crd-dir", str(crd_dir)]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.kubeconfig = Path(self.proc.stdout.readline().strip())
        user = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]
        ca = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"][
            "certificate-authority"]
        self.http: dict[str, Any] = {"verify": ssl.create_default_context(cafile=ca),
                                     "headers": {"Authorization": f"Bearer {user['token']}"}}

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/_emulator/stats", timeout=60,
                                         **self.http).json()
        return data

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _populate(emu: Emulator, count: int, relay: RelayServer, generated_crds: bool
                    ) -> None:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=emu.url, timeout=60, limits=limits,
                                 **emu.http) as http:
        r = await http.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
        r.raise_for_status()
        if not generated_crds:
            for kind, plural in (
                ("ExternalSmtp", "externalsmtps"),
                ("OAuth2Provider", "oauth2providers"),
            ):
                r = await http.post(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    json=standin_crd(kind, plural),
                )
                r.raise_for_status()
        for name, data in (
            ("relay-ca", {"ca.crt": relay.ca_pem}),
            ("relay-password", {"password": PASSWORD}),
        ):
            r = await http.post(
                f"/api/v1/namespaces/{NS}/secrets",
                json={"metadata": {"name": name}, "data": {k: _b64(v) for k, v in data.items()}},
            )
            r.raise_for_status()
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ExternalSmtp",
                "metadata": {"name": f"relay-{i:05d}"},
                "spec": {
                    "host": "127.0.0.1",
                    "port": relay.port,
                    "startTLS": True,
                    "authentication": "UsernamePassword",
                    "username": USER,
                    "passwordFrom": {"secretKeyRef": {"name": "relay-password", "key": "password"}},
                    "tls": {
                        "caBundleFrom": {"secretKeyRef": {"name": "relay-ca", "key": "ca.crt"}},
                        "serverName": "localhost",
                    },
                    "connectionTest": {"checkRelay": False},
                    "selected": i == 0,
                    "refreshInterval": "24h",
                },
            }
            async with sem:
                r = await http.post(
                    f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/externalsmtps", json=body
                )
                r.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


def _ready_count(emu: Emulator) -> int:
    r = httpx.get(f"{emu.url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/externalsmtps",
                  timeout=120, **emu.http)
    n = 0
    for item in r.json().get("items", []):
        for c in (item.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                n += 1
    return n


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, concurrency: int,
                 all_namespaces: bool = False) -> None:
        self.log = log
        scope = ["--all-namespaces"] if all_namespaces else ["--namespace", NS]
        self.fh = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "operator",
                "--kubeconfig",
                str(kubeconfig),
                *scope,
                "--identity",
                "bench",
                "--lease-namespace",
                NS,
                "--health-port",
                "-1",
                "--metrics-port",
                "-1",
                "--allow-loopback",
                "--concurrency",
                str(concurrency),
                "--per-host",
                str(concurrency),
            ],
            cwd=ROOT,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, SMTPCTL_VERSION_KEY="bench-key"),
        )

    def reconciled(self) -> int:
        return sum(
            1
            for line in self.log.read_text(errors="replace").splitlines()
            if '"msg":"reconciled"' in line
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator process so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> float:
        _sample(self.proc.pid)
        rss = _RSS.get(self.proc.pid, float("nan"))
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.fh.close()
        return rss


_RSS: dict[int, float] = {}  # pid -> highest VmHWM seen while waiting


def _sample(pid: int | None) -> None:
    if pid is not None:
        rss = _rss_peak_mb(pid)
        if rss == rss:  # not NaN: the process is alive
            _RSS[pid] = max(_RSS.get(pid, 0.0), rss)


def _wait(what: str, fn: Any, limit: float, pid: int | None = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        _sample(pid)
        if fn():
            return time.monotonic() - start
        time.sleep(0.25)
    raise SystemExit(f"bench: timed out after {limit:.0f}s waiting for {what}")


def run_one(count: int, concurrency: int, work: Path, stay_up: float = 0) -> dict[str, Any]:
    emu = Emulator(work)
    relay = RelayServer(mode="starttls", users={USER: PASSWORD}).start()
    try:
        kubeconfig = emu.kubeconfig
        t0 = time.monotonic()
        asyncio.run(_populate(emu, count, relay, emu.generated_crds))
        create_s = time.monotonic() - t0
        base = emu.stats()
        op = Operator(kubeconfig, work / f"operator-{count}-a.log", concurrency)
        ready_s = _wait("all Ready", lambda: _ready_count(emu) >= count, 3600, op.proc.pid)
        _wait("first pass logged", lambda: op.reconciled() >= count, 600, op.proc.pid)
        cpu_first = op.cpu_seconds()
        rss_first = op.stop()
        first = emu.stats()
        tests_first = relay.connections
        op2 = Operator(kubeconfig, work / f"operator-{count}-b.log", concurrency)
        t1 = time.monotonic()
        catchup_s = _wait("catch-up", lambda: op2.reconciled() >= count, 3600, op2.proc.pid)
        _ = t1
        for _ in range(4):  # a second of calm: anything still to come would show now
            _sample(op2.proc.pid)
            time.sleep(0.25)
        second = emu.stats()
        cpu_catchup = op2.cpu_seconds()
        exited = op2.proc.poll()
        stayed = 0.0
        if stay_up and exited is None:  # the restarted operator must keep its Lease
            t_up = time.monotonic()
            while time.monotonic() - t_up < stay_up and op2.proc.poll() is None:
                _sample(op2.proc.pid)
                time.sleep(1)
            stayed = time.monotonic() - t_up
            exited = op2.proc.poll()
        rss_restart = op2.stop()
        tests_restart = relay.connections - tests_first
        writes_restart = sum(  # Lease renewals are writes too, but not of resources
            v - first["writes_by_plural"].get(k, 0)
            for k, v in second["writes_by_plural"].items()
            if k != "leases"
        )
        req_first = first["requests"] - base["requests"]
        req_restart = second["requests"] - first["requests"]
        return {
            "count": count,
            "create_seconds": round(create_s, 2),
            "ready_seconds": round(ready_s, 2),
            "tests_first": tests_first,
            "catchup_seconds": round(catchup_s, 2),
            "tests_during_catchup": tests_restart,
            "writes_during_catchup": writes_restart,
            "operator_exit_during_catchup": exited,
            "stayed_up_seconds_after_catchup": round(stayed, 1),
            "operator_cpu_ms_per_resource_first": round(cpu_first * 1000 / count, 2),
            "operator_cpu_ms_per_resource_catchup": round(cpu_catchup * 1000 / count, 2),
            "rss_first_mb": round(rss_first, 1),
            "rss_restart_mb": round(rss_restart, 1),
            "api_requests_per_resource_first": round(req_first / count, 2),
            "api_requests_per_resource_catchup": round(req_restart / count, 2),
            "requests_first_by_method": {
                k: v - base["by_method"].get(k, 0) for k, v in first["by_method"].items()
            },
        }
    finally:
        relay.stop()
        emu.close()


async def _unrelated_secrets(emu: Emulator, megabytes: int) -> None:
    """``megabytes`` of Secrets nobody references (Helm-release-like, 512 KiB each), half
    in the operator's namespace and half in another one."""
    blob = _b64("x" * (384 * 1024))  # 512 KiB once base64-encoded
    async with httpx.AsyncClient(base_url=emu.url, timeout=120, **emu.http) as http:
        r = await http.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
        r.raise_for_status()
        for i in range(megabytes * 2):
            ns = NS if i % 2 == 0 else "other"
            r = await http.post(f"/api/v1/namespaces/{ns}/secrets", json={
                "metadata": {"name": f"sh.helm.release.v1.app{i}.v1"},
                "data": {"release": blob}})
            r.raise_for_status()


def run_secrets(megabytes: int, count: int, concurrency: int, work: Path) -> dict[str, Any]:
    """Peak operator RSS (cluster-wide mode) with ``megabytes`` of unrelated Secrets."""
    emu = Emulator(work)
    relay = RelayServer(mode="starttls", users={USER: PASSWORD}).start()
    try:
        kubeconfig = emu.kubeconfig
        asyncio.run(_populate(emu, count, relay, emu.generated_crds))
        asyncio.run(_unrelated_secrets(emu, megabytes))
        op = Operator(kubeconfig, work / f"operator-secrets-{megabytes}.log", concurrency,
                      all_namespaces=True)
        ready_s = _wait("all Ready", lambda: _ready_count(emu) >= count, 1800, op.proc.pid)
        for _ in range(8):  # two seconds of calm
            _sample(op.proc.pid)
            time.sleep(0.25)
        rss = op.stop()
        return {"unrelated_secrets_mb": megabytes, "count": count,
                "ready_seconds": round(ready_s, 2), "rss_peak_mb": round(rss, 1)}
    finally:
        relay.stop()
        emu.close()


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "free": mem}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--count", type=int, action="append", help="resources (repeatable; default 1000 and 10000)"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the operator logs here (default: a temporary directory)")
    parser.add_argument("--stay-up", type=float, default=0, metavar="SECONDS",
                        help="keep the restarted operator running this long after catch-up "
                        "and report whether it is still up (it must keep its Lease)")
    parser.add_argument("--unrelated-secrets-mb", type=int, action="append", default=None,
                        help="instead: peak RSS with this many MB of unrelated Secrets "
                        "(repeatable, e.g. 0 10 100; 100 resources, cluster-wide mode)")
    args = parser.parse_args()
    if args.unrelated_secrets_mb is not None:
        with tempfile.TemporaryDirectory(prefix="smtpctl-bench-operator-") as tmp_dir:
            rows = [run_secrets(mb, 100, args.concurrency, Path(tmp_dir))
                    for mb in args.unrelated_secrets_mb]
        print(f"{'unrelated MB':>13} {'resources':>10} {'ready s':>8} {'peak RSS MB':>12}")
        for r in rows:
            print(f"{r['unrelated_secrets_mb']:>13} {r['count']:>10} {r['ready_seconds']:>8} "
                  f"{r['rss_peak_mb']:>12}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "secrets": rows}, indent=1))
        return 0
    counts = args.count or [1000, 10000]
    results = []
    with tempfile.TemporaryDirectory(prefix="smtpctl-bench-operator-") as tmp_dir:
        tmp = str(args.workdir) if args.workdir else tmp_dir
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
        for count in counts:
            print(f"== {count} resources", flush=True)
            r = run_one(count, args.concurrency, Path(tmp), args.stay_up)
            r["catchup_target_ratio"] = round(r["catchup_seconds"] / 60.0, 3)
            r["rss_target_ratio"] = round(max(r["rss_first_mb"], r["rss_restart_mb"]) / 400.0, 3)
            results.append(r)
            print(json.dumps(r, indent=1), flush=True)
    out = {"machine": machine(), "results": results}
    print()
    print(
        f"{'count':>7} {'ready s':>9} {'catch-up s':>11} {'tests@restart':>14} "
        f"{'RSS MB':>8} {'req/res':>8} {'req/res@restart':>16}"
    )
    for r in results:
        print(
            f"{r['count']:>7} {r['ready_seconds']:>9} {r['catchup_seconds']:>11} "
            f"{r['tests_during_catchup']:>14} "
            f"{max(r['rss_first_mb'], r['rss_restart_mb']):>8} "
            f"{r['api_requests_per_resource_first']:>8} "
            f"{r['api_requests_per_resource_catchup']:>16}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    failed = [r for r in results if r["tests_during_catchup"] or r["writes_during_catchup"]
              or r["operator_exit_during_catchup"] is not None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
