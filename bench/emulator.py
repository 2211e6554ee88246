"""API emulator benchmark: ``./dev bench emulator [--count N] [--profile DIR]``.

Measures the Kubernetes API emulator on its own (issue 15: "the emulator ... is profiled
separately"), in two parts:

* **CEL cost per ExternalSmtp write**, in this process: every ``x-kubernetes-validations``
  rule of our generated CRD evaluated on the values of a written object, three ways: the
  old emulator (cel-python's interpreter, each rule compiled on every write), cel-python
  with the programs compiled once, and the emulator now (cel-expr-python, the C++ CEL,
  compiled once when the CRD is installed).  Also the whole schema check per write
  (OpenAPI + CEL) without the memo, and as the emulator answers a value it has seen.
  Microseconds per write, median of runs.
* **The emulator under the operator's request mix**, in its own process (strict: HTTPS,
  tokens, RBAC), its CPU time read from ``/proc/PID/stat`` around each phase, each phase for
  every resource at ``--concurrency`` in flight, with two watches open (ExternalSmtps and
  Secrets, all namespaces, as the operator's reflectors).  ``--mix operator`` (the default)
  is what the operator sends now per new resource that is not selected, after the
  benchmark's create: one status PUT with the verdict, ``Selected`` and the test memo
  (``status.testMemo``; since session 12 - the finalizer goes only on a relay about to be
  selected, one per namespace).  ``--mix memo-patch`` is the operator's mix before session
  12 (that status PUT without the memo, then a merge PATCH with the memo annotation and the
  finalizer); ``--mix full`` the older seven-request mix (create, GET, finalizer PATCH,
  ``Reconciling`` status PUT, final status PUT, memo PATCH, an Event).  CPU milliseconds per
  request per phase, and per resource.  ``--emulator-root DIR`` (repeatable) runs the
  emulator from another source tree (e.g. ``git archive main`` unpacked): an A/B in one
  invocation, ``--repeat`` rounds alternating the trees.  ``--profile DIR`` runs the
  emulator under py-spy and prints where its CPU goes (the raw collapsed stacks are kept in
  DIR).
* **Small requests while big ones run** (``--fairness-count N``, default 3000; 0 skips it;
  ``--only-fairness`` runs only this part): a leader in its own process renews a Lease
  back to back while two full LISTs of N ExternalSmtps and a watch replaying them run;
  renewal latency p50 / p99 / max.

The record is docs/benchmarks/emulator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.kube_schema import StructuralSchema  # noqa: E402

GROUP, VERSION, NS = "smtp.reconciler.dev", "v1alpha1", "bench"
CRD = ROOT / "manifests" / "crds" / "externalsmtps.smtp.reconciler.dev.yaml"
BASE = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/externalsmtps"
HZ = os.sysconf("SC_CLK_TCK")


# --- part 1: CEL per write ------------------------------------------------------------


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def written_objects() -> list[dict[str, Any]]:
    """The examples as the API server stores them (defaulted), each with the status the
    operator writes: what every ExternalSmtp write validates."""
    schema = StructuralSchema(crd_schema())
    out = []
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "ExternalSmtp":
                continue
            obj = schema.default(schema.prune(doc))
            obj["status"] = status_body(obj, 2)
            causes = schema.validate(obj)
            assert not causes, (path, causes)
            out.append(obj)
    return out


# status.testMemo as the operator writes it with the verdict (reconciler/stores/kube.py;
# the digest covers the spec and the secrets' keyed versions, never a secret)
MEMO = {"digest": "sha256:" + "0" * 64, "generation": 1, "testedAt": 1767225600.0,
        "dueAt": 1767312000.0, "passed": True, "failures": 0}


def status_body(obj: dict[str, Any], generation: int) -> dict[str, Any]:
    now = "2026-01-01T00:00:00Z"
    spec = obj.get("spec") or {}
    return {
        "observedGeneration": generation, "selected": False, "activeGeneration": generation,
        "lastTestTime": now, "lastSuccessfulTestTime": now,
        "lastTest": {"generation": generation, "passed": True, "reason": "TestPassed",
                     "stage": "quit", "message": "The connection test passed",
                     "durationSeconds": 0.05, "warnings": []},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "TestPassed", "message": "passed",
             "observedGeneration": generation, "lastTransitionTime": now},
            {"type": "Selected", "status": "False", "reason": "NotRequested",
             "message": "spec.selected is false", "observedGeneration": generation,
             "lastTransitionTime": now}],
        "active": {"host": spec.get("host", ""), "port": spec.get("port", 587),
                   "authentication": spec.get("authentication", "None"),
                   "generation": generation, "verifiedAt": now, "health": "Healthy",
                   "digest": "sha256:" + "0" * 32, "tlsMode": "starttls"},
    }


def rule_sites(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, Any]]:
    """(rule, value) for every rule the server evaluates on ``value`` (the emulator's
    traversal: properties, additionalProperties, items)."""
    for rule in schema.get("x-kubernetes-validations") or []:
        yield rule["rule"], value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) or (addl if isinstance(addl, dict) and not props else None)
            if sub is not None and key != "metadata":
                yield from rule_sites(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            yield from rule_sites(schema["items"], item)


def _per_write(fn: Callable[[], None], writes: int, runs: int) -> float:
    """Median over runs of the mean microseconds per write."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(writes):
            fn()
        samples.append((time.perf_counter() - t0) / writes * 1e6)
    return statistics.median(samples)


def cel_cost(writes: int, runs: int) -> dict[str, Any]:
    import celpy  # cel-python: the interpreter the emulator used before
    from celpy.adapter import json_to_cel

    raw = crd_schema()
    objects = written_objects()
    bodies = [{k: v for k, v in o.items() if k != "metadata"} for o in objects]
    sites = [list(rule_sites(raw, body)) for body in bodies]
    env = celpy.Environment()

    def interpret_every_time() -> None:
        for obj_sites in sites:
            for rule, value in obj_sites:
                prog = env.program(env.compile(rule))
                prog.evaluate({"self": json_to_cel(value)})

    programs = {rule: env.program(env.compile(rule)) for s in sites for rule, _ in s}

    def interpret_compiled_once() -> None:
        for obj_sites in sites:
            for rule, value in obj_sites:
                programs[rule].evaluate({"self": json_to_cel(value)})

    schema = StructuralSchema(raw)

    def cel_expr_python() -> None:
        for body in bodies:
            causes: list[dict[str, str]] = []
            schema._cel(body, None, schema.schema, [], causes)  # the emulator's CEL step

    long_way = StructuralSchema(raw, memo_size=0)

    def whole_check() -> None:  # the long way: no memo
        for obj in objects:
            long_way.validate(obj)

    def whole_check_memo() -> None:  # the emulator: the same values again come from the memo
        for obj in objects:
            schema.validate(obj)

    n = len(objects)
    out = {
        "objects": n, "rules_per_write": round(sum(len(s) for s in sites) / n, 1),
        "writes": writes * n, "runs": runs,
        "us_per_write_celpy_compiled_per_write": _per_write(interpret_every_time, writes,
                                                             runs) / n,
        "us_per_write_celpy_compiled_once": _per_write(interpret_compiled_once, writes,
                                                       runs) / n,
        "us_per_write_cel_expr_python": _per_write(cel_expr_python, writes, runs) / n,
        "us_per_write_whole_schema_check": _per_write(whole_check, writes, runs) / n,
        "us_per_write_whole_schema_check_memo_hit": _per_write(whole_check_memo, writes,
                                                               runs) / n,
    }
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


# --- part 2: the emulator process under the operator's request mix -------------------


class EmulatorProcess:
    def __init__(self, work: Path, profile: Path | None, root: Path = ROOT) -> None:
        args = [sys.executable, "-m", "tests.support.kube_emulator", "--crd-dir",
                str(root / "manifests" / "crds"), "--workdir", str(work / "emulator")]
        self.profile = profile
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            args = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
                    "-o", str(profile / "emulator.collapsed"), "--", *args]
        self.proc = subprocess.Popen(args, cwd=root, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        lines: list[str] = []
        for _ in range(20):  # py-spy may print its own banner first
            line = self.proc.stdout.readline().strip()
            lines.append(line)
            if line.startswith("https://"):
                break
        self.url = lines[-1]
        kubeconfig = yaml.safe_load(Path(self.proc.stdout.readline().strip()).read_text())
        ca = kubeconfig["clusters"][0]["cluster"]["certificate-authority"]
        token = kubeconfig["users"][0]["user"]["token"]
        self.ca, self.token = str(ca), str(token)
        self.http: dict[str, Any] = {"verify": ssl.create_default_context(cafile=ca),
                                     "headers": {"Authorization": f"Bearer {token}"}}
        self.pid = self._emulator_pid()

    def _emulator_pid(self) -> int:
        if self.profile is None:
            return self.proc.pid
        for _ in range(100):  # py-spy's child
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = [int(p) for p in kids.read_text().split()] if kids.exists() else []
            if pids:
                return pids[0]
            time.sleep(0.05)
        raise SystemExit("bench: no emulator process under py-spy")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def smtp_body(i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ExternalSmtp",
            "metadata": {"name": f"relay-{i:05d}"},
            "spec": {"host": "127.0.0.1", "port": 2525, "startTLS": True,
                     "authentication": "UsernamePassword", "username": "user@example.test",
                     "passwordFrom": {"secretKeyRef": {"name": "relay-password",
                                                       "key": "password"}},
                     "tls": {"caBundleFrom": {"secretKeyRef": {"name": "relay-ca",
                                                               "key": "ca.crt"}},
                             "serverName": "localhost"},
                     "connectionTest": {"checkRelay": False}, "refreshInterval": "24h"}}


async def _watch(http: httpx.AsyncClient, path: str, seen: collections.Counter[str],
                 stop: asyncio.Event) -> None:
    async with http.stream("GET", path, params={"watch": "true", "timeoutSeconds": "3600"},
                           timeout=None) as r:
        async for line in r.aiter_lines():
            if line.strip():
                seen[path] += 1
            if stop.is_set():
                return


async def drive(emu: EmulatorProcess, count: int, concurrency: int,
                mix: str = "operator") -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    phases: dict[str, dict[str, float]] = {}
    seen: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=emu.url, timeout=120, limits=limits,
                                 **emu.http) as http:
        r = await http.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
        r.raise_for_status()
        watches = [asyncio.create_task(_watch(http, p, seen, stop)) for p in
                   (f"/apis/{GROUP}/{VERSION}/externalsmtps", "/api/v1/secrets")]
        sem = asyncio.Semaphore(concurrency)
        objs: dict[int, dict[str, Any]] = {}

        async def phase(name: str, one: Callable[[int], Any]) -> None:
            async def guarded(i: int) -> None:
                async with sem:
                    resp = await one(i)
                    resp.raise_for_status()
                    if resp.headers.get("content-type", "").startswith("application/json"):
                        body = resp.json()
                        if body.get("kind") == "ExternalSmtp":
                            objs[i] = body
            cpu0, t0 = emu.cpu_seconds(), time.monotonic()
            await asyncio.gather(*(guarded(i) for i in range(count)))
            cpu, wall = emu.cpu_seconds() - cpu0, time.monotonic() - t0
            phases[name] = {"cpu_ms_per_request": round(cpu / count * 1000, 3),
                            "requests_per_s": round(count / wall, 1)}

        def status(i: int, generation: int, ready: bool) -> dict[str, Any]:
            obj = copy.deepcopy(objs[i])
            st = status_body(obj, generation)
            if not ready:
                st = {"observedGeneration": generation, "conditions": [
                    {"type": "Ready", "status": "Unknown", "reason": "Reconciling",
                     "message": "testing", "observedGeneration": generation,
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            obj["status"] = st
            return obj

        def with_memo(i: int) -> dict[str, Any]:
            obj = status(i, 1, True)
            obj["status"]["testMemo"] = MEMO
            return obj

        await phase("create (POST)", lambda i: http.post(BASE, json=smtp_body(i)))
        merge = {"Content-Type": "application/merge-patch+json"}
        if mix == "operator":
            await phase("status with verdict, Selected and test memo (PUT)", lambda i: http.put(
                f"{BASE}/relay-{i:05d}/status", json=with_memo(i),
                params={"fieldManager": "smtpctl-operator"}))
            return await _finish(phases, seen, stop, watches, count, concurrency, mix)
        if mix == "memo-patch":
            await phase("status with verdict and Selected (PUT)", lambda i: http.put(
                f"{BASE}/relay-{i:05d}/status", json=status(i, 1, True),
                params={"fieldManager": "smtpctl-operator"}))
            await phase("memo + finalizer (merge PATCH)", lambda i: http.patch(
                f"{BASE}/relay-{i:05d}", headers=merge,
                params={"fieldManager": "smtpctl-operator"},
                content=json.dumps({"metadata": {
                    "finalizers": ["smtp.reconciler.dev/finalizer"],
                    "annotations": {"smtp.reconciler.dev/last-test": json.dumps(
                        {"generation": 1, "passed": True})},
                    "resourceVersion": objs[i]["metadata"]["resourceVersion"]}})))
            return await _finish(phases, seen, stop, watches, count, concurrency, mix)
        await phase("read (GET)", lambda i: http.get(f"{BASE}/relay-{i:05d}"))
        await phase("finalizer (PATCH)", lambda i: http.patch(
            f"{BASE}/relay-{i:05d}", headers=merge, params={"fieldManager": "smtpctl-operator"},
            content=json.dumps({"metadata": {
                "finalizers": ["smtp.reconciler.dev/finalizer"],
                "resourceVersion": objs[i]["metadata"]["resourceVersion"]}})))
        await phase("status Reconciling (PUT)", lambda i: http.put(
            f"{BASE}/relay-{i:05d}/status", json=status(i, 1, False),
            params={"fieldManager": "smtpctl-operator"}))
        await phase("status Ready (PUT)", lambda i: http.put(
            f"{BASE}/relay-{i:05d}/status", json=status(i, 1, True),
            params={"fieldManager": "smtpctl-operator"}))
        await phase("memo (PATCH)", lambda i: http.patch(
            f"{BASE}/relay-{i:05d}", headers=merge, params={"fieldManager": "smtpctl-operator"},
            content=json.dumps({"metadata": {"annotations": {
                "smtp.reconciler.dev/last-test": json.dumps({"generation": 1, "passed": True})
            }}})))
        await phase("event (POST)", lambda i: http.post(
            f"/api/v1/namespaces/{NS}/events", json={
                "metadata": {"name": f"relay-{i:05d}.e"}, "reason": "TestPassed",
                "message": "generation 1 passed its connection test", "type": "Normal",
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ExternalSmtp",
                                   "name": f"relay-{i:05d}", "namespace": NS},
                "firstTimestamp": "2026-01-01T00:00:00Z", "count": 1,
                "source": {"component": "smtpctl-operator"}}))
        return await _finish(phases, seen, stop, watches, count, concurrency, mix)


async def _finish(phases: dict[str, dict[str, float]], seen: collections.Counter[str],
                  stop: asyncio.Event, watches: list[asyncio.Task[None]], count: int,
                  concurrency: int, mix: str) -> dict[str, Any]:
    stop.set()
    for w in watches:
        w.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    total = sum(p["cpu_ms_per_request"] for p in phases.values())
    return {"count": count, "concurrency": concurrency, "mix": mix, "phases": phases,
            "requests_per_resource": len(phases),
            "cpu_ms_per_resource": round(total, 2),
            "cpu_ms_per_request": round(total / len(phases), 3),
            "watch_events_delivered": dict(seen)}


# --- part 3: small requests while big ones run -----------------------------------------


LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
# The leader, in a process of its own (its latency must not include this process parsing
# the big lists): GET + PUT of the Lease back to back until stdin closes, then the
# latencies (ms) as one JSON line.
RENEWER = """
import json, ssl, sys, threading, time
import httpx
url, ca, token, lease = sys.argv[1:5]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca), timeout=600,
                  headers={"Authorization": f"Bearer {token}"}) as http:
    http.get(lease).raise_for_status()
    print("ready", flush=True)
    while not stop.is_set():
        t0 = time.monotonic()
        current = http.get(lease).json()
        current["spec"]["renewTime"] = "2026-12-01T08:00:00.000000Z"
        http.put(lease, json=current).raise_for_status()
        latencies.append((time.monotonic() - t0) * 1000)
print(json.dumps(latencies), flush=True)
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def fairness(emu: EmulatorProcess, count: int, rounds: int) -> dict[str, Any]:
    """Lease renewals (GET + PUT, back to back, on their own connection and in their own
    process, as a leader's) while big requests run: two full LISTs of ``count``
    ExternalSmtps (with status, as kopf lists after a restart, no ``limit``) and a watch
    that replays them all.  Renewal latency (wall ms, p50 / p99 / max) against how long
    the big requests took."""
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=emu.url, timeout=600, limits=limits,
                                 **emu.http) as http:
        r = await http.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
        r.raise_for_status()
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                made = await http.post(BASE, json=smtp_body(i))
                made.raise_for_status()
                obj = made.json()
                obj["status"] = status_body(obj, 1)
                put = await http.put(f"{BASE}/relay-{i:05d}/status", json=obj,
                                     params={"fieldManager": "smtpctl-operator"})
                put.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))
        lease = await http.post(LEASES, json={
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "bench", "leaseDurationSeconds": 15}})
        lease.raise_for_status()
        latencies: list[float] = []
        big_ms: list[float] = []
        for _ in range(rounds):
            async def full_list() -> None:
                t0 = time.monotonic()
                body = (await http.get(BASE)).content  # not parsed: this process is light
                assert body.count(b'"kind": "ExternalSmtp"') == count
                big_ms.append((time.monotonic() - t0) * 1000)

            async def replay() -> None:
                t0 = time.monotonic()
                seen = 0
                async with http.stream("GET", BASE, params={"watch": "1"}) as w:
                    async for line in w.aiter_lines():
                        seen += bool(line.strip())
                        if seen == count:
                            break
                big_ms.append((time.monotonic() - t0) * 1000)

            renewer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", RENEWER, emu.url, emu.ca, emu.token,
                f"{LEASES}/leader", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            assert renewer.stdin is not None and renewer.stdout is not None
            assert (await renewer.stdout.readline()).strip() == b"ready"
            await asyncio.gather(full_list(), full_list(), replay())
            renewer.stdin.close()
            latencies += json.loads(await renewer.stdout.readline())
            await renewer.wait()
        return {"count": count, "rounds": rounds, "renewals": len(latencies),
                "renewal_ms_p50": round(_percentile(latencies, 0.5), 1),
                "renewal_ms_p99": round(_percentile(latencies, 0.99), 1),
                "renewal_ms_max": round(max(latencies), 1),
                "big_request_ms_median": round(statistics.median(big_ms), 1),
                "big_request_ms_max": round(max(big_ms), 1)}


# --- profile summary --------------------------------------------------------------------

BUCKETS = (  # first match wins, checked on every frame of a stack, innermost first
    ("CEL (cel-expr-python)", ("kube_cel.py",)),
    ("field manager (kube_ssa)", ("kube_ssa.py",)),
    ("OpenAPI schema check", ("jsonschema", "kube_schema.py")),
    ("object validation", ("kube_validation.py",)),
    ("authentication/RBAC", ("kube_auth.py",)),
    ("JSON encode/decode", ("json/", "json\\")),
    ("TLS", ("ssl.py", "sslproto.py")),
    ("watch fan-out", ("_serve_watch",)),
    ("kmock request parsing/rendering", ("kmock",)),
    ("aiohttp", ("aiohttp",)),
    ("asyncio loop", ("asyncio",)),
)


def summarize(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Self time by function and time by bucket from py-spy's collapsed stacks, as shares
    of the busy samples (the event loop waiting in ``select`` is idle, counted apart)."""
    total = idle = 0
    by_bucket: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if "select (selectors.py" in frames[-1]:
            idle += count
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in reversed(frames):
            bucket = next((b for b, keys in BUCKETS if any(k in frame for k in keys)), None)
            if bucket is not None:
                by_bucket[bucket] += count
                break
        else:
            by_bucket["other (idle, interpreter)"] += count
    pct = {b: round(100 * c / total, 1) for b, c in by_bucket.most_common()}
    hot = [(f, round(100 * c / total, 1)) for f, c in self_time.most_common(top)]
    return {"busy_samples": total, "idle_samples": idle, "by_bucket_percent": pct,
            "top_self_percent": hot}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--count", type=int, default=1000, help="resources (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cel-writes", type=int, default=200,
                        help="writes of each example per CEL run (default 200)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the emulator under py-spy; keep its stacks in this dir")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--fairness-count", type=int, default=3000,
                        help="ExternalSmtps listed and replayed while a Lease is renewed "
                             "(default 3000; 0 skips that part)")
    parser.add_argument("--fairness-rounds", type=int, default=3)
    parser.add_argument("--only-fairness", action="store_true",
                        help="run only the Lease-renewal part")
    parser.add_argument("--mix", choices=("operator", "memo-patch", "full"),
                        default="operator",
                        help="operator: create, one status PUT with the verdict and the test "
                             "memo (what the operator sends now); memo-patch: create, status "
                             "PUT, memo+finalizer PATCH (before session 12); full: the older "
                             "seven requests")
    parser.add_argument("--emulator-root", type=Path, action="append", default=None,
                        metavar="DIR", help="run the emulator from this source tree "
                        "(repeatable: an A/B in one invocation; default: this tree)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the load part (the trees alternate in each round)")
    parser.add_argument("--skip-cel", action="store_true", help="skip the CEL part")
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": machine()}
    if args.fairness_count:
        print(f"== Lease renewals while {args.fairness_count} ExternalSmtps are listed and "
              "replayed", flush=True)
        with tempfile.TemporaryDirectory(prefix="smtpctl-bench-emulator-") as tmp:
            emu = EmulatorProcess(Path(tmp), None)
            try:
                out["fairness"] = asyncio.run(fairness(emu, args.fairness_count,
                                                       args.fairness_rounds))
            finally:
                emu.close()
        print(json.dumps(out["fairness"], indent=1), flush=True)
    if args.only_fairness:
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=1))
        return 0
    if not args.skip_cel:
        print("== CEL per ExternalSmtp write", flush=True)
        out["cel"] = cel_cost(args.cel_writes, args.runs)
        print(json.dumps(out["cel"], indent=1), flush=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    roots = [r.resolve() for r in args.emulator_root or [ROOT]]
    runs: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        for root in roots:
            print(f"== emulator process ({root}), {args.count} resources, mix {args.mix}, "
                  f"round {rnd + 1}", flush=True)
            with tempfile.TemporaryDirectory(prefix="smtpctl-bench-emulator-") as tmp:
                load0 = machine()["loadavg"][0]
                emu = EmulatorProcess(Path(tmp), args.profile, root)
                try:
                    run = asyncio.run(drive(emu, args.count, args.concurrency, args.mix))
                finally:
                    emu.close()
            run.update(root=str(root), round=rnd + 1, load_1min=[load0,
                                                                 machine()["loadavg"][0]])
            runs.append(run)
            print(json.dumps(run, indent=1), flush=True)
    out["load"] = runs[0] if len(runs) == 1 else runs
    if len(runs) > 1:
        print("\n  round  load 1-min   emulator ms/res  root", flush=True)
        for run in runs:
            print(f"  {run['round']:5}  {'-'.join(run['load_1min']):11}  "
                  f"{run['cpu_ms_per_resource']:15}  {run['root']}", flush=True)
    if args.profile is not None:
        out["profile"] = summarize(args.profile / "emulator.collapsed")
        print(json.dumps(out["profile"], indent=1), flush=True)
    out["machine_after"] = machine()["loadavg"]
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
