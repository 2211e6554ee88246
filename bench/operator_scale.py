"""Operator benchmark against the API emulator: ``./dev bench operator_scale [--count N ...]``.

(Named ``operator_scale``, not ``operator``: a ``bench/operator.py`` shadowed the standard
library's ``operator`` module for every script run from ``bench/``.)

Every process in its own interpreter, so none shares a GIL with what it measures: the API
emulator (``tests/support/kube_emulator.py``, strict, with the generated CRDs so every write
is schema- and CEL-validated), a real loopback aiosmtpd relay (STARTTLS + AUTH, trustme CA;
``bench.fleet.Relay``), the real ``smtpctl operator`` process, and this script, which
creates the resources and watches them.

Per count (default 1,000 and 10,000), with ``--repeat`` runs of each:

* **raw relay capacity**: the same relay, just before the operator starts, driven by
  several client processes running the connection test alone (no engine, no API): tests/s
  the relay sustains on this machine now (:func:`raw_capacity`);
* **create -> all Ready**: N ExternalSmtp (one password Secret, one CA Secret) exist, the
  operator starts; the time until every resource is ``Ready=True``, detected with a
  **watch** (never by polling the list); Ready/s and its ratio to the raw capacity;
* **CPU per resource** of the operator, the emulator and the relay during that phase
  (``/proc/PID/stat``), separately;
* **API requests per resource**: counted at the emulator (every request) and by verb and
  resource at the operator (``smtpctl_kube_requests_total``);
* **peak RSS** (``VmHWM``) of the operator;
* ``--start warm`` (besides the default ``cold``, which is the above): the operator runs
  first (Lease held, caches primed, idle with 0 resources), then the bench creates the N
  resources; **create -> all Ready** runs from the first create to the last resource
  first seen Ready (the GitOps path: a running operator, new resources);
* **restart catch-up**: the operator is stopped and started again; the time until it has
  reconciled all N, the connection tests (must be 0) and resource writes (must be 0)
  meanwhile; ``--stay-up S`` keeps it running S more seconds: it must keep its Lease;
* with two or more counts: **growth**, least-squares fits of operator CPU seconds and of
  create->Ready seconds against N (slope, intercept, R², and the share a quadratic term
  would take at the largest N).

``--pin-api-server`` runs every size twice in one invocation, **shared** (every process on
every CPU, as above) and **pinned**: the API emulator (and this script's watch) on one CPU,
the operator with its probe workers, the relay and the raw peer's client processes on the
others (``os.sched_setaffinity``, every thread; children inherit it), so the raw peer and
the operator get the same CPU budget and the API server's cost is outside it, as on a real
cluster (``--placement pinned`` alone runs only that one).  The operator's
``--probe-workers auto`` sees the CPUs of its affinity (one CPU: no worker).

``--profile DIR`` records the operator (and the emulator) with py-spy during the first
pass (raw collapsed stacks in DIR, a summary in the output); CPU numbers of profiled runs
are marked, because sampling costs the sampled process a little.

``--gc`` runs the operator under a hook (``GC_HOOK``: ``gc.callbacks`` around CPython's
cyclic collector, then ``runpy`` of ``reconciler``) that counts collections per generation
and the thread CPU each took; the output's ``gc_first`` gives them for the first
operator's life (start-up, first pass, stop) per 1,000 resources and as a share of that
process's CPU (session 13).

``--unrelated-secrets-mb 0 --unrelated-secrets-mb 10 --unrelated-secrets-mb 100`` instead
measures the operator's peak RSS (cluster-wide mode, 100 resources) with that much Secret
data no resource references.

Every wait is bounded (``--max-seconds`` for the whole run); the load average is recorded
at the start and the end of each run: the machine is shared, compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from fleet import PASSWORD, USER, Relay  # noqa: E402 - the relay in its own process
from fleet import raw_capacity as fleet_raw_capacity  # noqa: E402 - perf's raw peer

from reconciler.stores.kubeapi import Credentials, Gone, KubeApi  # noqa: E402
from tests.support.kube_operator import standin_crd  # noqa: E402

GROUP, VERSION = "smtp.reconciler.dev", "v1alpha1"
NS = "bench"
LIST_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/externalsmtps"


class Deadline:
    """The run's time budget: every wait takes what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (NaN once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- where each process runs --------------------------------------------------------------


class Placement:
    """CPU sets for the run's processes: ``shared`` (no pinning) or ``pinned`` (the API
    server on the first CPU of this process's affinity, everything else on the rest)."""

    def __init__(self, name: str) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.name = name
        self.api: set[int] | None = None
        self.rest: set[int] | None = None
        if name == "pinned":
            if len(cpus) < 2:
                raise SystemExit("bench: --pin-api-server needs two CPUs or more")
            self.api, self.rest = {cpus[0]}, set(cpus[1:])
        elif name != "shared":
            raise SystemExit(f"bench: unknown placement {name!r} (shared, pinned)")
        self.all = set(cpus)

    @property
    def api_cores(self) -> int:
        return len(self.api or self.all)

    @property
    def rest_cores(self) -> int:
        return len(self.rest or self.all)

    @contextlib.contextmanager
    def on(self, cpus: set[int] | None) -> Iterator[None]:
        """This thread on ``cpus`` meanwhile (None: unchanged): processes and threads it
        starts inherit the mask."""
        if cpus is None:
            yield
            return
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, old)


def affinity(pid: int) -> list[int]:
    """The CPUs every thread of ``pid`` may run on (their union; [] once it is gone)."""
    cpus: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                cpus |= os.sched_getaffinity(int(tid))
    except OSError:
        return []
    return sorted(cpus)


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
        doc = yaml.safe_load(self.kubeconfig.read_text())
        self.token = str(doc["users"][0]["user"]["token"])
        self.ca = str(doc["clusters"][0]["cluster"]["certificate-authority"])
        self.http: dict[str, Any] = {"verify": ssl.create_default_context(cafile=self.ca),
                                     "headers": {"Authorization": f"Bearer {self.token}"}}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def credentials(self) -> Credentials:
        return Credentials(server=self.url, token=self.token,
                           ssl_context=ssl.create_default_context(cafile=self.ca))

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/_emulator/stats", timeout=120,
                                         **self.http).json()
        return data

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def requests_selection(i: int, fraction: float) -> bool:
    """Does relay ``i`` ask for selection?  Relay 0 always; with ``fraction`` f, one relay
    in every 1/f, spread evenly (1.0: every relay, the quadratic case of a selection that
    converts the whole namespace on every run)."""
    return i == 0 or int((i + 1) * fraction) > int(i * fraction)


async def _populate(emu: Emulator, count: int, relay: Relay, ca_extra: str = "",
                    selected_fraction: float = 0.0, *, setup: bool = True) -> None:
    """The namespace, the CRDs (stand-ins without generated ones) and the two Secrets
    (``setup``), then ``count`` ExternalSmtps, 16 creates in flight."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=emu.url, timeout=120, limits=limits,
                                 **emu.http) as http:
        if setup:
            await _setup(http, emu, relay, ca_extra)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ExternalSmtp",
                "metadata": {"name": f"relay-{i:05d}"},
                "spec": {
                    "host": "127.0.0.1", "port": relay.port, "startTLS": True,
                    "authentication": "UsernamePassword", "username": USER,
                    "passwordFrom": {"secretKeyRef": {"name": "relay-password",
                                                      "key": "password"}},
                    "tls": {"caBundleFrom": {"secretKeyRef": {"name": "relay-ca",
                                                              "key": "ca.crt"}},
                            "serverName": "localhost"},
                    "connectionTest": {"checkRelay": False},
                    "selected": requests_selection(i, selected_fraction),
                    "refreshInterval": "24h",
                },
            }
            async with sem:
                r = await http.post(LIST_PATH, json=body)
                r.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


async def _setup(http: httpx.AsyncClient, emu: Emulator, relay: Relay, ca_extra: str) -> None:
    r = await http.post("/api/v1/namespaces", json={"metadata": {"name": NS}})
    r.raise_for_status()
    if not emu.generated_crds:
        for kind, plural in (("ExternalSmtp", "externalsmtps"),
                             ("OAuth2Provider", "oauth2providers")):
            r = await http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                json=standin_crd(kind, plural))
            r.raise_for_status()
    for name, data in (("relay-ca", {"ca.crt": relay.ca_pem + ca_extra}),
                       ("relay-password", {"password": PASSWORD})):
        r = await http.post(f"/api/v1/namespaces/{NS}/secrets", json={
            "metadata": {"name": name}, "data": {k: _b64(v) for k, v in data.items()}})
        r.raise_for_status()


# --- the relay's capacity: the peer the operator is compared with -------------------------

def raw_capacity(relay: Relay, count: int, concurrency: int) -> dict[str, Any]:
    """Tests/s the relay sustains (perf's peer, ``fleet.raw_capacity``: several client
    processes so no single client's CPU is the limit, the operator's concurrency in flight);
    the relay's CPU share is reported too (near 1.0 = the relay process is the limit)."""
    r = fleet_raw_capacity(relay, count, concurrency=concurrency, event_loop=RAW_EVENT_LOOP)
    return {"tests": r.tests, "processes": r.processes, "concurrency": concurrency,
            "event_loop": RAW_EVENT_LOOP,
            "tests_per_second": round(r.rate, 1),
            "relay_cpu_share": round(r.relay_cpu / r.wall, 2),
            "relay_cpu_ms_per_test": round(r.relay_cpu * 1000 / r.tests, 2),
            "client_cpu_ms_per_test": round(r.client_cpu * 1000 / r.tests, 2),
            "load_average_1min": list(r.load)}


# --- Ready, seen on a watch -----------------------------------------------------------------

def _is_ready(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            return True
    return False


class ReadyWatch:
    """A list+watch of the ExternalSmtps (its own thread and loop): which are Ready now,
    and when the count first reached a target."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.ready: set[str] = set()
        self.first_ready: dict[str, float] = {}  # name -> when first seen Ready (monotonic)
        self.events = 0
        self._lock = threading.Lock()
        self._target = 0
        self._reached = threading.Event()
        self.reached_at = 0.0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)
        self._thread.start()
        if not self._listed.wait(120):
            raise SystemExit("bench: the Ready watch could not list")

    def _update(self, name: str, ready: bool) -> None:
        with self._lock:
            if ready:
                self.ready.add(name)
                self.first_ready.setdefault(name, time.monotonic())
            else:
                self.ready.discard(name)
            if self._target and len(self.ready) >= self._target and not self._reached.is_set():
                self.reached_at = time.monotonic()
                self._reached.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by wait()
            self._error = exc
            self._reached.set()
            self._listed.set()

    async def _main(self) -> None:
        api = KubeApi(self.emu.credentials())
        try:
            while not self._stop.is_set():
                rv = ""
                async for items, page_rv in api.list_page(LIST_PATH, {"limit": "500"}):
                    for item in items:
                        self._update(item["metadata"]["name"], _is_ready(item))
                    rv = page_rv or rv
                self._listed.set()
                try:
                    while not self._stop.is_set():
                        async for event in api.watch(LIST_PATH, {"resourceVersion": rv},
                                                     timeout_seconds=60):
                            obj = event.get("object") or {}
                            rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                            if event.get("type") == "BOOKMARK":
                                continue
                            self.events += 1
                            name = obj["metadata"]["name"]
                            self._update(name, event.get("type") != "DELETED"
                                         and _is_ready(obj))
                            if self._stop.is_set():
                                return
                except Gone:
                    continue  # re-list
        finally:
            await api.close()

    def wait(self, count: int, seconds: float, alive: Any = None, tick: float = 0.5) -> float:
        """Seconds from now until ``count`` are Ready (SystemExit after ``seconds``)."""
        t0 = time.monotonic()
        with self._lock:
            self._target = count
            if len(self.ready) >= count:
                self.reached_at = t0
                self._reached.set()
        while not self._reached.wait(tick):
            if alive is not None:
                alive()
            if time.monotonic() - t0 > seconds:
                raise SystemExit(f"bench: {len(self.ready)} of {count} Ready after "
                                 f"{seconds:.0f}s")
        if self._error is not None:
            raise SystemExit(f"bench: the Ready watch failed: {self._error!r}")
        return self.reached_at - t0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the operator -----------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Process ids of the children of ``pid`` (the operator's probe workers)."""
    try:
        return [int(c) for c in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


# How the operator finds the API server (``--credentials``): "in-cluster" (the default) as
# a deployed operator does - a ServiceAccount directory (token, ca.crt, namespace) and
# KUBERNETES_SERVICE_HOST/PORT, through the SMTPCTL_SERVICEACCOUNT_DIR hook; "kubeconfig":
# ``--kubeconfig`` (which also imports the kubernetes package's kubeconfig loader, ~0.08 s
# of the operator's start-up that a pod does not pay).
CREDENTIALS = "in-cluster"
# The raw peer's client loop (``--raw-event-loop``): uvloop, as the operator's default loop
# (``smtpctl operator --event-loop``), so both sides run the connection test on the same
# loop; "asyncio" for runs comparable with records before uvloop.
RAW_EVENT_LOOP = "uvloop"
# ``--raw-after`` (the default; ``--no-raw-after``): the raw peer again right after the
# first pass, as well as right before it.
RAW_AFTER = True
GC_ACCOUNT = False  # --gc: the operator under GC_HOOK (collections and their CPU)

# Run as ``python -c GC_HOOK operator ...`` (cwd: the operator's tree, as ``-m``): every
# collection's generation, objects collected and thread CPU (the collector runs in the
# thread that triggered it), written to $SMTPCTL_BENCH_GC_OUT at exit.
GC_HOOK = """
import atexit, gc, json, os, runpy, time
_out = os.environ["SMTPCTL_BENCH_GC_OUT"]
_st = {"collections": [0, 0, 0], "collected": [0, 0, 0], "cpu_seconds": [0.0, 0.0, 0.0]}
_t = [0.0]
def _cb(phase, info, _st=_st, _t=_t, _now=time.thread_time):
    if phase == "start":
        _t[0] = _now()
        return
    g = info["generation"]
    _st["collections"][g] += 1
    _st["collected"][g] += info["collected"]
    _st["cpu_seconds"][g] += _now() - _t[0]
def _dump():
    _st["process_cpu_seconds"] = time.process_time()
    with open(_out, "w") as f:
        json.dump(_st, f)
gc.callbacks.append(_cb)
atexit.register(_dump)
runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
"""


def operator_credentials(emu: Emulator, log: Path) -> tuple[list[str], dict[str, str]]:
    """The operator's arguments and environment for ``CREDENTIALS``."""
    if CREDENTIALS == "kubeconfig":
        return ["--kubeconfig", str(emu.kubeconfig)], {}
    sa = log.parent / "serviceaccount"
    sa.mkdir(parents=True, exist_ok=True)
    (sa / "token").write_text(emu.token)
    (sa / "ca.crt").write_text(Path(emu.ca).read_text())
    (sa / "namespace").write_text(NS)
    url = urlsplit(emu.url)
    return [], {"KUBERNETES_SERVICE_HOST": str(url.hostname),
                "KUBERNETES_SERVICE_PORT": str(url.port), "SMTPCTL_SERVICEACCOUNT_DIR": str(sa)}


class Operator:
    def __init__(self, emu: Emulator, log: Path, concurrency: int,
                 all_namespaces: bool = False, probe_workers: str = "auto",
                 root: Path = ROOT) -> None:
        self.log = log
        self.metrics_port = free_port()
        scope = ["--all-namespaces"] if all_namespaces else ["--namespace", NS]
        where, env = operator_credentials(emu, log)
        self.fh = log.open("wb")
        self.gc_out = log.with_suffix(".gc.json") if GC_ACCOUNT else None
        if self.gc_out is not None:
            env = dict(env, SMTPCTL_BENCH_GC_OUT=str(self.gc_out))
        self.proc = subprocess.Popen(
            [sys.executable, *(("-c", GC_HOOK) if self.gc_out is not None
                               else ("-m", "reconciler")), "operator",
             *where, *scope,
             "--identity", "bench", "--lease-namespace", NS,
             "--health-host", "127.0.0.1", "--health-port", "-1",
             "--metrics-port", str(self.metrics_port),
             "--allow-loopback", "--concurrency", str(concurrency),
             "--per-host", str(concurrency), "--probe-workers", probe_workers],
            # cwd first on sys.path (``-m``): ``root``'s reconciler package is the one run
            cwd=root, stdout=self.fh, stderr=subprocess.STDOUT,
            env=dict(os.environ, SMTPCTL_VERSION_KEY="bench-key", **env),
        )
        self.rss_peak = 0.0
        self.worker_cpu: dict[int, float] = {}  # probe worker pid -> CPU seen last
        self._reconciled = 0
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sample(self) -> None:
        rss = rss_peak_mb(self.pid)
        if rss == rss:
            self.rss_peak = max(self.rss_peak, rss)
        self.sample_workers()
        if self.proc.poll() is not None:
            raise SystemExit(f"bench: the operator exited with {self.proc.returncode} "
                             f"(log: {self.log})")

    def sample_workers(self) -> float:
        """CPU seconds of the probe workers so far (each worker's last sample is kept,
        so one that ended still counts)."""
        for pid in children(self.pid):
            cpu = cpu_seconds(pid)
            if cpu == cpu:
                self.worker_cpu[pid] = cpu
        return sum(self.worker_cpu.values())

    def reconciled(self) -> int:
        """Lines logged "reconciled" so far (the log is read incrementally)."""
        with self.log.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        self._reconciled += sum(1 for line in lines if b'"msg":"reconciled"' in line)
        return self._reconciled

    def requests(self) -> dict[str, float]:
        """``smtpctl_kube_requests_total`` by "VERB resource"."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).text
        out: dict[str, float] = {}
        for m in re.finditer(r'^smtpctl_kube_requests_total\{resource="([^"]*)",verb="([^"]*)"\}'
                             r' ([0-9.e+]+)$', text, re.M):
            out[f"{m.group(2)} {m.group(1)}"] = float(m.group(3))
        return out

    def events(self) -> dict[str, dict[str, float]]:
        """Events posted (``smtpctl_events_total``) and suppressed, by "type reason"
        and "type reason limit" (``smtpctl_events_suppressed_total``)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).text
        out: dict[str, dict[str, float]] = {"posted": {}, "suppressed": {}}
        for m in re.finditer(r'^smtpctl_events_(total|suppressed_total)\{([^}]*)\} ([0-9.e+]+)$',
                             text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = " ".join(labels[k] for k in ("type", "reason", "limit") if k in labels)
            out["posted" if m.group(1) == "total" else "suppressed"][key] = float(m.group(3))
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.fh.close()

    def gc_stats(self, count: int) -> dict[str, Any] | None:
        """After :meth:`stop`, with ``--gc``: the collector's work over the process's life,
        per generation, per 1,000 resources and as a share of the process's CPU."""
        if self.gc_out is None or not self.gc_out.exists():
            return None
        st = json.loads(self.gc_out.read_text())
        cpu = sum(st["cpu_seconds"])
        return {"collections": st["collections"], "collected": st["collected"],
                "cpu_seconds": [round(x, 3) for x in st["cpu_seconds"]],
                "collections_per_1000_resources": [round(c * 1000 / count, 2)
                                                   for c in st["collections"]],
                "cpu_us_per_resource": round(cpu * 1e6 / count, 1),
                "share_of_process_cpu": round(cpu / st["process_cpu_seconds"], 4)
                if st["process_cpu_seconds"] else None,
                "process_cpu_seconds": round(st["process_cpu_seconds"], 2)}


def _wait(what: str, fn: Any, seconds: float, tick: Any = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if tick is not None:
            tick()
        if fn():
            return time.monotonic() - start
        time.sleep(0.25)
    raise SystemExit(f"bench: timed out after {seconds:.0f}s waiting for {what}")


class Profiler:
    """py-spy on a process (raw collapsed stacks), stopped with SIGINT."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--idle", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# Where a sample's CPU goes: the innermost frame matching one of these (file path parts).
PARTS = [
    ("TLS (ssl)", ("ssl.py", "sslproto.py")),
    ("SMTP connection test (probe, aiosmtplib)", ("reconciler/probe/", "aiosmtplib/")),
    ("JSON encode/decode", ("json/",)),
    ("aiohttp client", ("aiohttp/", "multidict/", "yarl/")),
    ("engine (reconcile, assess, digest, selection)", ("reconciler/engine/",)),
    ("pydantic (manifest parsing)", ("pydantic", "reconciler/resources.py")),
    ("credentials (secret sources, cache)", ("reconciler/credentials/",
                                            "reconciler/runtimes/secretcache.py")),
    ("store and watch (kube store, reflectors, controller)", (
        "reconciler/stores/", "reconciler/runtimes/operator/", "reconciler/runtimes/publish.py")),
    ("logging", ("logging/", "reconciler/runtimes/logjson.py")),
    ("asyncio event loop", ("asyncio/",)),
]


def profile_summary(path: Path) -> dict[str, Any]:
    """Shares of the busy samples, each counted once under the innermost matching part."""
    busy, idle = Counter[str](), 0
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        leaf = frames[-1] if frames else ""
        if "(selectors.py" in leaf or "(threading.py" in leaf or "_do_waitpid" in leaf:
            # waiting, not working (asyncio's child watcher thread blocks in waitpid)
            idle += count
            continue
        total += count
        part = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in PARTS if any(k in frame for k in keys)), None)
            if hit is not None:
                part = hit
                break
        busy[part] += count
    shares = {k: round(100 * v / total, 1) for k, v in busy.most_common()} if total else {}
    return {"busy_samples": total, "idle_samples": idle, "share_percent": shares}


# --- one run ------------------------------------------------------------------------------

def idle_projection(raw: dict[str, Any], main_ms: float, workers_ms: float,
                    emulator_ms: float, relay_ms: float, workers: int,
                    placement: Placement | None = None) -> float:
    """The ratio this run's CPU times predict for this machine with nothing else running
    (a projection, not a measurement; as ``fleet.py``'s): each side's rate is capped by
    the cores its processes may use, by the relay's one process, and on the operator's side
    by its loop (one core), the emulator's loop (one core) and the probe workers (one core
    each).  Shared: every process on every core.  Pinned: the raw peer's clients, the
    relay, the operator and its workers on the operator's cores; the emulator alone on its
    own."""
    shared = placement is None or placement.api is None
    cores = (os.cpu_count() or 1) if placement is None else placement.rest_cores
    client, relay_raw = raw["client_cpu_ms_per_test"], raw["relay_cpu_ms_per_test"]
    raw_rate = min(cores / (client + relay_raw), 1 / relay_raw)
    total = main_ms + workers_ms + relay_ms + (emulator_ms if shared else 0.0)
    caps = [cores / total, 1 / relay_ms, 1 / main_ms, 1 / emulator_ms]
    if not shared and placement is not None:
        caps.append(placement.api_cores / emulator_ms)
    if workers and workers_ms > 0:
        caps.append(min(workers, cores) / workers_ms)
    return float(min(caps) / raw_rate)


# --- which API requests are whose -----------------------------------------------------------

# "VERB resource" (as the operator counts them) of the requests every new resource costs:
# its status write (verdict, Selected and, since session 12, the test memo), its Event; a
# PATCH is the selected relay's finalizer (before session 12: every relay's memo+finalizer).
PER_RESOURCE = ("PUT externalsmtps/status", "PATCH externalsmtps", "POST events",
                "PUT oauth2providers/status", "PATCH oauth2providers")


def attribute(by_verb: dict[str, float], count: int, seconds: float) -> dict[str, Any]:
    """Split the operator's requests of a pass into per-resource writes, Lease traffic
    (a start-up GET/POST, then one renewal PUT per retry period: proportional to time,
    not to N) and fixed start-up requests (discovery, LISTs, WATCHes, the version key,
    the Secrets read by name, the published Secret)."""
    per = {k: v for k, v in by_verb.items() if k in PER_RESOURCE}
    lease = {k: v for k, v in by_verb.items() if k.endswith(" leases")}
    fixed = {k: v for k, v in by_verb.items() if k not in per and k not in lease}
    n_per, n_lease, n_fixed = sum(per.values()), sum(lease.values()), sum(fixed.values())
    return {
        "per_resource": per, "per_resource_per_resource": round(n_per / count, 4),
        "lease": lease, "lease_requests": n_lease,
        "lease_requests_per_second": round(n_lease / seconds, 3) if seconds > 0 else None,
        "fixed": fixed, "fixed_requests": n_fixed,
        "total": n_per + n_lease + n_fixed,
        "total_per_resource": round((n_per + n_lease + n_fixed) / count, 4),
    }


# --- where the first pass's time goes -----------------------------------------------------

# Operator log lines that mark a start-up phase (the first of each).
MARKS = {"connecting": "connecting", "leader": "became leader", "primed": "primed cache",
         "first_reconciled": "reconciled", "first_event": "event"}


def _log_marks(log: Path, t0_wall: float) -> dict[str, float]:
    """Seconds after the operator's start (wall clock ``t0_wall``) at which the
    operator first logged each of :data:`MARKS` (its JSON log's ``ts``, milliseconds)."""
    out: dict[str, float] = {}
    with log.open("rb") as fh:
        for line in fh:
            if len(out) == len(MARKS):
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for key, msg in MARKS.items():
                if key not in out and rec.get("msg") == msg:
                    ts = str(rec.get("ts", ""))
                    try:
                        when = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) \
                            + float("0" + ts[19:-1])
                    except ValueError:
                        continue
                    out[key] = round(when - t0_wall, 3)
    return out


def cpu_busy_seconds() -> list[float]:
    """Busy CPU seconds of each CPU since boot (``/proc/stat``: everything but idle and
    iowait), to see what else ran on the operator's core during a phase."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    with open("/proc/stat") as fh:
        for line in fh:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in vals]
                out.append((sum(v[:8]) - v[3] - v[4]) / tick)
    return out


Sample = tuple[float, dict[str, float]]  # (monotonic time, CPU seconds by process or "cpuN")


def phases(ready_times: list[float], samples: list[Sample], t0: float, count: int,
           raw_rate: float, rest_cpus: list[int] | None = None) -> dict[str, Any]:
    """The first pass cut into phases from the Ready watch's times (seconds after the
    operator's start): until the first Ready, the ramp (to 10 % Ready), the steady part
    (10 % -> 90 % Ready) and the tail (90 % -> 100 %); the CPU seconds of the operator,
    the emulator and the relay in each (from ``samples``, every ~0.25 s) and, pinned, the
    busy seconds of the operator's core(s) that were none of ours ("others"); and the
    seconds each phase lost against the steady rate (what the pass would save if it ran
    at the steady rate)."""
    ts = sorted(t - t0 for t in ready_times)
    if len(ts) < count or count < 10:
        return {}

    def at(frac: float) -> float:
        return ts[max(0, min(count - 1, round(frac * count) - 1))]

    t_first, t10, t50, t90, t_all = ts[0], at(0.1), at(0.5), at(0.9), ts[-1]
    steady = (0.8 * count) / (t90 - t10) if t90 > t10 else float("inf")

    def value_at(key: str, when: float) -> float:
        before = [x[key] for t, x in samples if t - t0 <= when and key in x]
        if before:
            return before[-1]
        first = [x[key] for _t, x in samples if key in x]
        return first[0] if first else float("nan")

    def between(key: str, a: float, b: float) -> float:
        return round(value_at(key, b) - value_at(key, a), 3)

    cuts = {"to_first_ready": (0.0, t_first), "ramp": (t_first, t10),
            "steady": (t10, t90), "tail": (t90, t_all)}
    cpu: dict[str, dict[str, float]] = {}
    for name, (a, b) in cuts.items():
        row = {k: between(k, a, b) for k in ("operator", "emulator", "relay")}
        if rest_cpus:
            busy = sum(between(f"cpu{c}", a, b) for c in rest_cpus)
            row["rest_cores_busy"] = round(busy, 3)
            row["others_on_rest_cores"] = round(busy - row["operator"] - row["relay"], 3)
        row["seconds"] = round(b - a, 3)
        cpu[name] = row
    # Per second of the pass: resources first seen Ready, and the CPU seconds of the
    # operator, the emulator and the relay in that second (where a tail comes from).
    timeline = []
    for sec in range(int(t_all) + 1):
        timeline.append([sec, sum(1 for t in ts if sec <= t < sec + 1),
                         *(between(k, sec, sec + 1)
                           for k in ("operator", "emulator", "relay"))])
    return {
        "timeline_per_second": timeline,
        "first_ready_s": round(t_first, 3), "t10_s": round(t10, 3), "t50_s": round(t50, 3),
        "t90_s": round(t90, 3), "all_ready_s": round(t_all, 3),
        "steady_ready_per_s": round(steady, 1),
        "steady_to_raw_ratio": round(steady / raw_rate, 3) if raw_rate else None,
        "tail_ready_per_s": round(0.1 * count / (t_all - t90), 1) if t_all > t90 else None,
        # seconds more than the steady rate would have taken for that share of resources
        "lost_before_first_ready_s": round(t_first, 3),
        "lost_ramp_s": round((t10 - t_first) - 0.1 * count / steady, 3),
        "lost_tail_s": round((t_all - t90) - 0.1 * count / steady, 3),
        "cpu_s": cpu,
        "operator_cpu_ms_per_resource_steady": round(
            between("operator", t10, t90) * 1000 / (0.8 * count), 2),
        "emulator_cpu_ms_per_resource_steady": round(
            between("emulator", t10, t90) * 1000 / (0.8 * count), 2),
    }


def run_one(count: int, concurrency: int, work: Path, deadline: Deadline, *,
            stay_up: float = 0, raw_tests: int = 0, profile: Path | None = None,
            probe_workers: str = "auto", placement: str = "shared",
            operator_root: Path = ROOT, profile_rate: int = 100,
            ca_extra: str = "", selected_fraction: float = 0.0,
            start: str = "cold") -> dict[str, Any]:
    place = Placement(placement)
    # This script (its Ready watch, the samplers) runs on the API server's side: on a
    # real cluster whoever waits for Ready is not on the operator's node either.
    with place.on(place.api):
        return _run_one(count, concurrency, work, deadline, stay_up=stay_up,
                        raw_tests=raw_tests, profile=profile, probe_workers=probe_workers,
                        place=place, operator_root=operator_root, profile_rate=profile_rate,
                        ca_extra=ca_extra, selected_fraction=selected_fraction,
                        start=start)


def _run_one(count: int, concurrency: int, work: Path, deadline: Deadline, *,
             stay_up: float, raw_tests: int, profile: Path | None,
             probe_workers: str, place: Placement, operator_root: Path,
             profile_rate: int, ca_extra: str,
             selected_fraction: float = 0.0, start: str = "cold") -> dict[str, Any]:
    """One run.  ``start`` "cold": the N resources exist, then the operator starts (its
    start-up is part of the time to Ready); "warm": the operator runs first (Lease held,
    caches primed, nothing to do), then the bench creates the N resources and the time
    runs from the first create to the last Ready (the GitOps path)."""
    warm = start == "warm"
    load_start = os.getloadavg()
    with place.on(place.api):
        emu = Emulator(work)
    with place.on(place.rest):
        relay = Relay()
    watch: ReadyWatch | None = None
    op: Operator | None = None
    try:
        t0 = time.monotonic()
        asyncio.run(_populate(emu, 0 if warm else count, relay, ca_extra, selected_fraction))
        create_s = time.monotonic() - t0
        with place.on(place.rest):  # the raw peer's client processes
            raw = raw_capacity(relay, raw_tests or min(count, 2000), concurrency)
        watch = ReadyWatch(emu)
        op_cpu0 = 0.0
        if warm:  # the operator first: running, Lease held, primed, idle
            with place.on(place.rest):
                op = Operator(emu, work / f"operator-{count}-a.log", concurrency,
                              probe_workers=probe_workers, root=operator_root)
            idle_op = op
            _wait("the idle operator's primed cache",
                  lambda: b'"msg":"primed cache"' in idle_op.log.read_bytes(),
                  deadline.left(120), idle_op.sample)
            # Then at rest (its watches open, nothing to do): under 10 ms of CPU in one
            # 0.25 s tick of _wait, so its start-up is not counted in the pass.
            spent = [cpu_seconds(idle_op.pid)]

            def at_rest() -> bool:
                now = cpu_seconds(idle_op.pid)
                quiet, spent[0] = now - spent[0] < 0.010, now
                return quiet

            _wait("the idle operator at rest", at_rest, deadline.left(60), idle_op.sample)
            op_cpu0 = cpu_seconds(op.pid)
        base = emu.stats()
        relay_tests0 = relay.connections
        emu_cpu0, relay_cpu0 = cpu_seconds(emu.pid), cpu_seconds(relay.pid)
        t_start = time.monotonic()
        t_start_wall = time.time()
        if warm:
            assert op is not None
            asyncio.run(_populate(emu, count, relay, ca_extra, selected_fraction, setup=False))
            create_s = time.monotonic() - t_start
        else:
            with place.on(place.rest):
                op = Operator(emu, work / f"operator-{count}-a.log", concurrency,
                              probe_workers=probe_workers, root=operator_root)
        op_first = op
        samples: list[Sample] = []

        def alive() -> None:
            op_first.sample()
            row = {"operator": cpu_seconds(op_first.pid), "emulator": cpu_seconds(emu.pid),
                   "relay": cpu_seconds(relay.pid)}
            row.update((f"cpu{i}", v) for i, v in enumerate(cpu_busy_seconds()))
            samples.append((time.monotonic(), row))

        alive()
        profilers = [Profiler(op.pid, profile / f"operator-{count}-{place.name}.raw",
                              profile_rate),
                     Profiler(emu.pid, profile / f"emulator-{count}-{place.name}.raw",
                              profile_rate)] if profile else []
        ready_s = watch.wait(count, deadline.left(7200), alive=alive, tick=0.25)
        cpu_op = cpu_seconds(op.pid) - op_cpu0
        alive()
        first_ready = list(watch.first_ready.values())
        if warm:  # from the first create to the last resource first seen Ready
            ready_s = max(first_ready) - t_start
        cpu_workers = op.sample_workers()
        workers_seen = len(op.worker_cpu)
        cpus_seen = {"emulator": affinity(emu.pid), "relay": affinity(relay.pid),
                     "operator": affinity(op.pid),
                     "probe_workers": sorted({c for w in children(op.pid)
                                              for c in affinity(w)})}
        cpu_emu = cpu_seconds(emu.pid) - emu_cpu0
        cpu_relay = cpu_seconds(relay.pid) - relay_cpu0
        for p in profilers:
            p.stop()
        _wait("first pass logged", lambda: op is not None and op.reconciled() >= count,
              deadline.left(600), op.sample)
        by_resource = op.requests()
        events_first = op.events()
        op_seconds = time.monotonic() - t_start  # the operator's life so far (Lease renewals)
        op.sample()
        rss_first = op.rss_peak
        op.stop()
        gc_first = op.gc_stats(count)
        first = emu.stats()
        tests_first = relay.connections - relay_tests0
        raw_after = None
        if RAW_AFTER:  # the same peer again, right after the pass (the host's speed drifts)
            with place.on(place.rest):
                raw_after = raw_capacity(relay, raw_tests or min(count, 2000), concurrency)
        relay_tests1 = relay.connections
        with place.on(place.rest):
            op2 = op = Operator(emu, work / f"operator-{count}-b.log", concurrency,
                                probe_workers=probe_workers, root=operator_root)
        catchup_s = _wait("catch-up", lambda: op2.reconciled() >= count,
                          deadline.left(3600), op2.sample)
        for _ in range(4):  # a second of calm: anything still to come would show now
            op2.sample()
            time.sleep(0.25)
        second = emu.stats()
        cpu_catchup = cpu_seconds(op2.pid)
        stayed = 0.0
        exited = op2.proc.poll()
        if stay_up and exited is None:  # the restarted operator must keep its Lease
            t_up = time.monotonic()
            while time.monotonic() - t_up < min(stay_up, deadline.left(stay_up)) \
                    and op2.proc.poll() is None:
                rss = rss_peak_mb(op2.pid)
                if rss == rss:
                    op2.rss_peak = max(op2.rss_peak, rss)
                time.sleep(1)
            stayed = time.monotonic() - t_up
            exited = op2.proc.poll()
        rss_restart = op2.rss_peak
        op2.stop()
        gc_restart = op2.gc_stats(count)
        op = None
        tests_restart = relay.connections - relay_tests1
        writes_restart = sum(  # Lease renewals are writes too, but not of resources
            v - first["writes_by_plural"].get(k, 0)
            for k, v in second["writes_by_plural"].items() if k != "leases")
        # (warm: the bench's own N creates are requests at the emulator too, not the
        # operator's)
        req_first = first["requests"] - base["requests"] - (count if warm else 0)
        req_restart = second["requests"] - first["requests"]
        ready_per_s = count / ready_s if ready_s > 0 else float("inf")
        out: dict[str, Any] = {
            "count": count,
            "start": start,
            "load_average_start": [round(x, 2) for x in load_start],
            "create_seconds": round(create_s, 2),
            "raw_relay": raw,
            "ready_seconds": round(ready_s, 2),
            "ready_per_second": round(ready_per_s, 1),
            "ready_to_raw_ratio": round(ready_per_s / raw["tests_per_second"], 3),
            # The raw peer measured again right after the pass, and the ratio against the
            # mean of both (the host's speed drifts by up to ~1.5x within a minute here)
            "raw_relay_after": raw_after,
            "ready_to_raw_after_ratio": round(
                ready_per_s / raw_after["tests_per_second"], 3) if raw_after else None,
            "ready_to_raw_mean_ratio": round(ready_per_s / (
                (raw["tests_per_second"] + raw_after["tests_per_second"]) / 2), 3)
            if raw_after else None,
            "tests_first": tests_first,
            "probe_workers": probe_workers,
            "placement": place.name,
            "operator_root": str(operator_root),
            "credentials": CREDENTIALS,
            "ca_bundle_bytes": len(relay.ca_pem) + len(ca_extra),
            "selected_fraction": selected_fraction,
            "requesting_selection": sum(requests_selection(i, selected_fraction)
                                        for i in range(count)),
            "cpus": cpus_seen,
            "probe_worker_processes": workers_seen,
            "operator_cpu_ms_per_resource_first": round(cpu_op * 1000 / count, 2),
            "probe_workers_cpu_ms_per_resource_first": round(cpu_workers * 1000 / count, 2),
            "operator_total_cpu_ms_per_resource_first": round(
                (cpu_op + cpu_workers) * 1000 / count, 2),
            "idle_projection_ratio": round(idle_projection(
                raw, cpu_op * 1000 / count, cpu_workers * 1000 / count,
                cpu_emu * 1000 / count, cpu_relay * 1000 / count, workers_seen, place), 3),
            "emulator_cpu_ms_per_resource_first": round(cpu_emu * 1000 / count, 2),
            "relay_cpu_ms_per_resource_first": round(cpu_relay * 1000 / count, 2),
            "operator_cpu_seconds_first": round(cpu_op, 2),
            "cpu_busy_cores_first": round((cpu_op + cpu_workers + cpu_emu + cpu_relay)
                                          / ready_s, 2)
            if ready_s > 0 else None,
            "rss_first_mb": round(rss_first, 1),
            "api_requests_per_resource_first": round(req_first / count, 3),
            "operator_requests_first": {k: v for k, v in sorted(by_resource.items())},
            "operator_requests_per_resource_first": round(sum(by_resource.values()) / count, 3),
            "requests_attributed_first": attribute(by_resource, count, op_seconds),
            "events_first": events_first,
            "phases_first": dict(phases(first_ready, samples, t_start, count,
                                        raw["tests_per_second"],
                                        sorted(place.rest) if place.rest else None),
                                 operator_log=_log_marks(op_first.log, t_start_wall)),
            "emulator_requests_first_by_method": {
                k: v - base["by_method"].get(k, 0) for k, v in first["by_method"].items()},
            "watch_events_seen_by_bench": watch.events,
            "gc_first": gc_first,
            "gc_restart": gc_restart,
            "catchup_seconds": round(catchup_s, 2),
            "tests_during_catchup": tests_restart,
            "writes_during_catchup": writes_restart,
            "operator_cpu_ms_per_resource_catchup": round(cpu_catchup * 1000 / count, 2),
            "api_requests_per_resource_catchup": round(req_restart / count, 3),
            "operator_exit_after_catchup": exited,
            "stayed_up_seconds_after_catchup": round(stayed, 1),
            "rss_restart_mb": round(rss_restart, 1),
            "profiled": profile is not None,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
        if profile is not None:
            out["profile"] = {
                "operator": profile_summary(profile / f"operator-{count}-{place.name}.raw"),
                "emulator": profile_summary(profile / f"emulator-{count}-{place.name}.raw"),
            }
        return out
    finally:
        if op is not None:
            op.stop()
        if watch is not None:
            watch.stop()
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


def run_secrets(megabytes: int, count: int, concurrency: int, work: Path,
                deadline: Deadline) -> dict[str, Any]:
    """Peak operator RSS (cluster-wide mode) with ``megabytes`` of unrelated Secrets."""
    emu = Emulator(work)
    relay = Relay()
    watch: ReadyWatch | None = None
    try:
        asyncio.run(_populate(emu, count, relay))
        asyncio.run(_unrelated_secrets(emu, megabytes))
        watch = ReadyWatch(emu)
        op = Operator(emu, work / f"operator-secrets-{megabytes}.log", concurrency,
                      all_namespaces=True)
        try:
            ready_s = watch.wait(count, deadline.left(1800), alive=op.sample)
            for _ in range(8):  # two seconds of calm
                op.sample()
                time.sleep(0.25)
        finally:
            op.stop()
        return {"unrelated_secrets_mb": megabytes, "count": count,
                "ready_seconds": round(ready_s, 2), "rss_peak_mb": round(op.rss_peak, 1)}
    finally:
        if watch is not None:
            watch.stop()
        relay.stop()
        emu.close()


# --- where the memory goes -------------------------------------------------------------------

def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes reachable from ``obj`` (containers, instances, coroutine frames), each object
    counted once (``seen``); modules, classes and functions are not followed."""
    import gc
    import types

    seen = set() if seen is None else seen
    stack, total = [obj], 0
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType, types.CodeType)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o, 0)
        if isinstance(o, (str, bytes, int, float, bool)) or o is None:
            continue
        if isinstance(o, (asyncio.Task, types.CoroutineType, types.FrameType,
                          types.GeneratorType, asyncio.Future)):
            stack.extend(gc.get_referents(o))
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        else:
            stack.extend(gc.get_referents(o))
    return total


def run_memory(count: int, concurrency: int, work: Path, deadline: Deadline,
               snapshot: Path | None = None) -> dict[str, Any]:
    """The operator *in this process* (the emulator and the relay in theirs): after every
    resource is Ready and the pass is over, the bytes each of its structures holds
    (:func:`deep_size`, in the order listed, so shared objects count once, where first
    reached) and the process's RSS before and after.  ``snapshot``: trace allocations
    (``tracemalloc``, 12 frames) and dump what is allocated then to that file (compare
    two sizes with :func:`snapshot_diff`)."""
    import gc
    import tracemalloc

    from reconciler.runtimes.operator.controller import Controller
    from reconciler.runtimes.operator.main import run_operator
    from reconciler.runtimes.operator.settings import OperatorConfig
    from reconciler.runtimes.operator.watching import Reflector

    emu = Emulator(work)
    relay = Relay()
    watch: ReadyWatch | None = None
    try:
        asyncio.run(_populate(emu, count, relay))
        watch = ReadyWatch(emu)
        config = OperatorConfig(
            kubeconfig=str(emu.kubeconfig), namespaces=[NS], lease_namespace=NS,
            identity="bench", health_port=-1, metrics_port=-1, allow_loopback=True,
            concurrency=concurrency, per_host=concurrency, version_key=b"bench-key")
        gc.collect()
        rss_before = rss_now_mb()
        ready_watch = watch
        if snapshot is not None:
            tracemalloc.start(12)

        async def main() -> tuple[dict[str, int], float, float]:
            stop = asyncio.Event()
            task = asyncio.create_task(run_operator(config, stop=stop))
            ready_s = await asyncio.to_thread(ready_watch.wait, count, deadline.left(3600))
            await asyncio.sleep(5)  # the last passes' memo writes and Events
            gc.collect()
            rss_ready = rss_now_mb()
            if snapshot is not None:
                tracemalloc.take_snapshot().dump(str(snapshot))
            ctl = next(o for o in gc.get_objects() if isinstance(o, Controller))
            refl = [o for o in gc.get_objects() if isinstance(o, Reflector)]
            seen: set[int] = set()
            store = ctl.store
            parts: dict[str, Any] = {
                "store: cached bodies": store._cache,
                "store: indexes (scope, selected)": (store._by_scope, store._selected),
                "store: read-your-writes bookkeeping": (store._awaited, store._inflight),
                "reflectors: known keys": [r._known for r in refl],
                "workers (task, coroutine frames, wake event)": ctl.pool.workers,
                "dependency index": ctl.index,
                "secret cache": ctl.secrets,
                "events: dedupe and rate-limit state": ctl.world.events,
                "publisher": ctl.publisher,
            }
            # Shared objects (the loop, clients, the world) are not anyone's per-resource cost.
            for shared in (ctl, store, ctl.world, ctl.pool, store.api, ctl.secrets.api,
                           asyncio.get_running_loop(), *refl):
                seen.add(id(shared))
            sizes = {name: deep_size(obj, seen) for name, obj in parts.items()}
            sample = next(iter(store._cache.values()), None)
            (work / "sample-body.json").write_text(json.dumps(sample, indent=1))
            sizes["(one cached body alone, its shared strings counted too)"] = \
                deep_size(sample) * count
            stop.set()
            await task
            return sizes, ready_s, rss_ready

        sizes, ready_s, rss_ready = asyncio.run(main())
    finally:
        if watch is not None:
            watch.stop()
        relay.stop()
        emu.close()
    per = 1024 * count
    return {
        "count": count, "ready_seconds": round(ready_s, 2),
        "rss_before_operator_mb": round(rss_before, 1),
        "rss_after_first_pass_mb": round(rss_ready, 1),
        "rss_growth_kb_per_resource": round((rss_ready - rss_before) * 1024 / count, 2),
        "kb_per_resource": {k: round(v / per, 2) for k, v in sizes.items()},
        "structures_kb_per_resource": round(sum(v for k, v in sizes.items()
                                                if not k.startswith("(")) / per, 2),
    }


def snapshot_diff(small: Path, large: Path, n_small: int, n_large: int,
                  top: int = 25) -> list[dict[str, Any]]:
    """Bytes per resource each allocation site holds more at ``n_large`` than at
    ``n_small`` resources (two ``--memory N --tracemalloc`` snapshots), grouped by the
    innermost frame in ``reconciler/`` (else the innermost frame) - what is held per
    resource, and where it was allocated."""
    import tracemalloc

    def by_site(path: Path) -> Counter[str]:
        snap = tracemalloc.Snapshot.load(str(path)).filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        sizes = Counter[str]()
        for stat in snap.statistics("traceback"):
            frames = list(stat.traceback)  # oldest call first, the allocation last
            ours = [f for f in frames if "/reconciler/" in f.filename]
            f = ours[-1] if ours else frames[-1]
            name = f.filename.split("/site-packages/")[-1].removeprefix(str(ROOT) + "/")
            sizes[f"{name}:{f.lineno}"] += stat.size
        return sizes

    a, b = by_site(small), by_site(large)
    per = n_large - n_small
    held = sorted(((round((b[k] - a.get(k, 0)) / per, 1), k) for k in b), reverse=True)
    return [{"site": k, "bytes_per_resource": v} for v, k in held[:top]]


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- growth -------------------------------------------------------------------------------

def fit(points: list[tuple[float, float]]) -> dict[str, Any]:
    """Least squares y = a + b*N (N in thousands), R², and y = a + b*N + c*N² when there
    are three sizes or more: the quadratic term's share of y at the largest N."""
    xs, ys = [p[0] / 1000 for p in points], [p[1] for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return {}
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    out: dict[str, Any] = {"intercept": round(a, 3), "per_thousand": round(b, 3),
                           "r2": round(1 - ss_res / ss_tot, 4) if ss_tot else 1.0}
    if len(set(xs)) >= 3:
        c0, c1, c2 = _solve([[sum(x ** (i + j) for x in xs) for j in range(3)]
                             for i in range(3)],
                            [sum(y * x ** i for x, y in zip(xs, ys, strict=True))
                             for i in range(3)])
        top = max(xs)
        total = c0 + c1 * top + c2 * top * top
        out["quadratic"] = {"a": round(c0, 3), "b": round(c1, 3), "c": round(c2, 4),
                            "c_share_at_max": round(c2 * top * top / total, 3)
                            if total else None}
    return out


def _solve(m: list[list[float]], v: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the 3x3 normal equations)."""
    n = len(v)
    a = [[*row, v[i]] for i, row in enumerate(m)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col and a[col][col]:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] if a[i][i] else 0.0 for i in range(n)]


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release()}


def _median_spread(maybe: list[float | None]) -> str:
    values = [v for v in maybe if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]}"
    return f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--count", type=int, action="append",
                        help="resources (repeatable; default 1000 and 10000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per count")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--probe-workers", action="append", default=None, metavar="N",
                        help="the operator's --probe-workers (repeatable: one run per value "
                        "and count, an A/B in one invocation; default auto)")
    parser.add_argument("--pin-api-server", action="store_true",
                        help="every run twice: shared (no pinning) and pinned (the API "
                        "emulator on one CPU, the operator, its workers, the relay and the "
                        "raw peer's clients on the others); same as --placement shared "
                        "--placement pinned")
    parser.add_argument("--placement", action="append", default=None,
                        choices=("shared", "pinned"),
                        help="where the processes run (repeatable; default shared)")
    parser.add_argument("--operator-root", type=Path, action="append", default=None,
                        metavar="DIR", help="run the operator from this source tree (e.g. "
                        "`git archive main` unpacked) instead of this one; repeatable: a "
                        "before/after A/B in one invocation, each run its own emulator and "
                        "relay (default: this tree)")
    parser.add_argument("--start", action="append", default=None, choices=("cold", "warm"),
                        help="cold (the default): the resources exist, then the operator "
                        "starts; warm: the operator runs idle (Lease held, primed), then the "
                        "bench creates the resources - time from the first create to the "
                        "last Ready (the GitOps path); repeatable: both in one invocation")
    parser.add_argument("--ca-bundle-extra", type=Path, default=None, metavar="PEM",
                        help="append this PEM file (e.g. /etc/ssl/certs/ca-certificates.crt, "
                        "a public-CA bundle) to the relays' CA bundle Secret")
    parser.add_argument("--selected-fraction", type=float, default=0.0, metavar="F",
                        help="fraction of the relays that ask for selection (0: only the "
                             "first; 1: every relay)")
    parser.add_argument("--raw-tests", type=int, default=0,
                        help="connection tests of the raw-capacity peer (default min(N, 2000))")
    parser.add_argument("--credentials", choices=("in-cluster", "kubeconfig"),
                        default="in-cluster",
                        help="how the operator finds the API server: as in a pod (the "
                        "default: a ServiceAccount token and CA file) or --kubeconfig")
    parser.add_argument("--raw-event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the raw peer's client loop (default uvloop, the operator's "
                        "default; asyncio: as the records before uvloop)")
    parser.add_argument("--raw-after", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the raw peer again right after the first pass and "
                        "report the ratio against it and against the mean of both (the "
                        "default; the host's speed drifts within a run)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the operator logs here (default: a temporary directory)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the operator and the emulator during the first pass")
    parser.add_argument("--gc", action="store_true",
                        help="count the operator's garbage collections and their CPU "
                        "(gc_first / gc_restart in the output)")
    parser.add_argument("--profile-rate", type=int, default=100, metavar="HZ",
                        help="py-spy's sampling rate with --profile (default 100)")
    parser.add_argument("--stay-up", type=float, default=0, metavar="SECONDS",
                        help="keep the restarted operator running this long after catch-up "
                        "and report whether it is still up (it must keep its Lease)")
    parser.add_argument("--stay-up-from", type=int, default=0, metavar="N",
                        help="only counts >= N stay up (--stay-up); e.g. a growth run over "
                        "1000 3000 10000 that checks the Lease at 10000 only")
    parser.add_argument("--max-seconds", type=float, default=3 * 3600,
                        help="the whole run's time budget (default 3 h)")
    parser.add_argument("--memory", type=int, default=None, metavar="N",
                        help="instead: where the operator's memory goes with N resources "
                        "(the operator in this process, its structures measured)")
    parser.add_argument("--tracemalloc", type=Path, default=None, metavar="DIR",
                        help="with --memory: dump a tracemalloc snapshot to DIR/operator-N.snap "
                        "and, with one of another N already there, print what is held per "
                        "resource by allocation site (the difference over the difference in N)")
    parser.add_argument("--unrelated-secrets-mb", type=int, action="append", default=None,
                        help="instead: peak RSS with this many MB of unrelated Secrets "
                        "(repeatable, e.g. 0 10 100; 100 resources, cluster-wide mode)")
    args = parser.parse_args()
    global CREDENTIALS, RAW_EVENT_LOOP, RAW_AFTER, GC_ACCOUNT
    CREDENTIALS, RAW_EVENT_LOOP = args.credentials, args.raw_event_loop
    RAW_AFTER = args.raw_after
    GC_ACCOUNT = args.gc
    deadline = Deadline(args.max_seconds)
    if args.memory is not None:
        with tempfile.TemporaryDirectory(prefix="smtpctl-bench-operator-") as tmp_dir:
            work = args.workdir or Path(tmp_dir)
            work.mkdir(parents=True, exist_ok=True)
            snap = None
            if args.tracemalloc is not None:
                args.tracemalloc.mkdir(parents=True, exist_ok=True)
                snap = args.tracemalloc / f"operator-{args.memory}.snap"
            mem = run_memory(args.memory, args.concurrency, work, deadline, snap)
        if args.tracemalloc is not None:
            others = sorted(int(p.stem.split("-")[1]) for p in
                            args.tracemalloc.glob("operator-*.snap"))
            others = [n for n in others if n != args.memory]
            if others:
                n0 = others[0]
                lo, hi = sorted((n0, args.memory))
                mem["held_per_resource_by_site"] = snapshot_diff(
                    args.tracemalloc / f"operator-{lo}.snap",
                    args.tracemalloc / f"operator-{hi}.snap", lo, hi)
        print(json.dumps(mem, indent=1))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "memory": mem}, indent=1))
        return 0
    if args.unrelated_secrets_mb is not None:
        with tempfile.TemporaryDirectory(prefix="smtpctl-bench-operator-") as tmp_dir:
            rows = [run_secrets(mb, 100, args.concurrency, Path(tmp_dir), deadline)
                    for mb in args.unrelated_secrets_mb]
        print(f"{'unrelated MB':>13} {'resources':>10} {'ready s':>8} {'peak RSS MB':>12}")
        for r in rows:
            print(f"{r['unrelated_secrets_mb']:>13} {r['count']:>10} {r['ready_seconds']:>8} "
                  f"{r['rss_peak_mb']:>12}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "secrets": rows}, indent=1))
        return 0
    counts = args.count or [1000, 10000]
    placements: list[str] = args.placement or (["shared", "pinned"] if args.pin_api_server
                                               else ["shared"])
    if args.pin_api_server:
        placements = list(dict.fromkeys(["shared", "pinned", *placements]))
    for name in placements:
        Placement(name)  # fails now, not after an hour, on a machine with one CPU
    roots: list[Path] = [r.resolve() for r in args.operator_root or [ROOT]]
    for root in roots:
        if not (root / "reconciler" / "__main__.py").is_file():
            raise SystemExit(f"bench: {root} holds no reconciler package")
    starts: list[str] = list(dict.fromkeys(args.start or ["cold"]))
    runs = [(c, w, pl, root, st) for c in counts for w in args.probe_workers or ["auto"]
            for pl in placements for st in starts for root in roots]
    results: list[dict[str, Any]] = []
    ca_extra = args.ca_bundle_extra.read_text() if args.ca_bundle_extra else ""
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smtpctl-bench-operator-") as tmp_dir:
        for rep in range(args.repeat):
            for i, (count, workers, placement, root, start) in enumerate(runs):
                work = (args.workdir or Path(tmp_dir)) / f"{count}-{workers}-{placement}-{i}-{rep}"
                work.mkdir(parents=True, exist_ok=True)
                print(f"== {count} resources, --probe-workers {workers}, {placement}, "
                      f"{start} start, operator from {root}, run {rep + 1}/{args.repeat}",
                      flush=True)
                stay_up = args.stay_up if count >= args.stay_up_from else 0
                r = run_one(count, args.concurrency, work, deadline, stay_up=stay_up,
                            raw_tests=args.raw_tests, profile=args.profile,
                            probe_workers=workers, placement=placement,
                            operator_root=root, profile_rate=args.profile_rate,
                            ca_extra=ca_extra, selected_fraction=args.selected_fraction,
                            start=start)
                results.append(r)
                print(json.dumps(r, indent=1), flush=True)
                if args.json:  # after every run: a long run that stops keeps what it has
                    args.json.write_text(json.dumps({"machine": machine(),
                                                     "results": results}, indent=1))
    growth: dict[str, Any] = {}
    if len(set(counts)) >= 2:
        for placement in placements:
            rs = [r for r in results if r["placement"] == placement
                  and r["operator_root"] == str(roots[0]) and r["start"] == starts[0]]
            growth[placement] = {
                "operator_cpu_seconds_first": fit([
                    (r["count"], r["operator_cpu_seconds_first"]) for r in rs]),
                "ready_seconds": fit([(r["count"], r["ready_seconds"]) for r in rs]),
                "rss_first_mb": fit([(r["count"], r["rss_first_mb"]) for r in rs]),
                # requests = a + b*N: b is what one more resource costs (b per thousand
                # below), a the fixed part; and the same for each attributed share
                "requests_first": fit([(r["count"], r["requests_attributed_first"]["total"])
                                       for r in rs]),
                "requests_first_per_resource_writes": fit([
                    (r["count"], sum(r["requests_attributed_first"]["per_resource"].values()))
                    for r in rs]),
                "requests_first_lease": fit([
                    (r["count"], r["requests_attributed_first"]["lease_requests"])
                    for r in rs]),
                "requests_first_fixed": fit([
                    (r["count"], r["requests_attributed_first"]["fixed_requests"])
                    for r in rs]),
            }
        print(json.dumps({"growth": growth}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results,
                                         "growth": growth}, indent=1))
    print()
    cols = [("ready/s", "ready_per_second"), ("raw/s", None), ("ratio", "ready_to_raw_ratio"),
            ("ratio to mean raw", "ready_to_raw_mean_ratio"),
            ("idle proj.", "idle_projection_ratio"),
            ("op ms/res", "operator_cpu_ms_per_resource_first"),
            ("workers ms/res", "probe_workers_cpu_ms_per_resource_first"),
            ("emu ms/res", "emulator_cpu_ms_per_resource_first"),
            ("req/res", "api_requests_per_resource_first"),
            ("per-res writes/res", "per_resource_writes"),
            ("fixed req", "fixed_requests"), ("lease req", "lease_requests"),
            ("RSS MB", "rss_first_mb"),
            ("catch-up s", "catchup_seconds")]
    print(f"{'count':>7} {'workers':>7} {'placement':>9} {'start':>5} {'root':>4} "
          + " ".join(f"{c:>22}" for c, _ in cols))

    def cell(r: dict[str, Any], key: str | None) -> Any:
        if key is None:
            return r["raw_relay"]["tests_per_second"]
        att = r["requests_attributed_first"]
        if key == "per_resource_writes":
            return att["per_resource_per_resource"]
        if key in ("fixed_requests", "lease_requests"):
            return att[key]
        return r[key]

    for count, workers, placement, root, start in runs:
        rows = [r for r in results if r["count"] == count and r["probe_workers"] == workers
                and r["placement"] == placement and r["operator_root"] == str(root)
                and r["start"] == start]
        if not rows:
            continue
        cells = [f"{_median_spread([cell(r, key) for r in rows]):>22}" for _n, key in cols]
        print(f"{count:>7} {workers:>7} {placement:>9} {start:>5} {roots.index(root):>4} "
              + " ".join(cells))
    if len(roots) > 1:
        print("root: " + ", ".join(f"{i} = {r}" for i, r in enumerate(roots)))
    failed = [r for r in results if r["tests_during_catchup"] or r["writes_during_catchup"]
              or r["operator_exit_after_catchup"] is not None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
