"""The operator's store work per new resource, in-process, without HTTP:
``./dev bench operator_store [--count N] [--bodies FILE] [--setup-only]``.

What the Kubernetes store (reconciler/stores/kube.py) does for each new ExternalSmtp of a
first pass, on bodies the API emulator really answered: the ADDED watch line parsed
(``kubeapi._watch_event``) and observed into the cache (slimmed and interned), the engine's
``get`` (a ``StoredObject``), the status PUT - its body encoded as ``KubeApi.call`` does,
the answer parsed and taken into the cache - and the watch echo of that write parsed and
observed (the version the cache already holds).  No event loop I/O, no engine, no test.

The bodies: one ExternalSmtp created on the emulator and its status PUT's answer (with
the verdict and ``status.testMemo``, as bench/emulator.py's operator mix writes it),
copied N times with their own names, uids and resourceVersions.  ``--capture FILE``
writes them and exits; ``--bodies FILE`` reads them (no emulator in the measured process).

Instruction counts (the host's speed drifts; these do not):
``valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -P
bench/operator_store.py --bodies FILE --count 400 [--setup-only] [--root DIR]``: the
difference of the two runs / N is the store's instructions per resource.  ``--root DIR``
imports ``reconciler`` from another source tree (an A/B; ``python -m compileall -q
reconciler`` in both).  The record is docs/benchmarks/operator.md (session 12, round 2).

``--controller`` (session 13): the two watch events go the operator's whole way instead of
straight into the store - a ``Reflector``'s ``dispatch`` and ``Controller.handle`` of the
controller ``runtimes/operator/main.build`` wires (the dependency index, the worker pool:
the ADDED event starts a pass task that never runs here) - and the output splits the CPU
per resource into the ADDED event, the status write (store side) and the echo.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def capture(path: Path) -> None:
    """Create one ExternalSmtp on the emulator, write its status; keep both answers."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import emulator as be  # bench/emulator.py: the same objects and status
    import httpx

    from tests.support.kube_emulator import running_emulator

    async with running_emulator(ROOT / "manifests" / "crds", namespaces=[be.NS]) as (emu, url):
        async with httpx.AsyncClient(base_url=url, **emu.http_kwargs()) as http:
            r = await http.post(be.BASE, json=be.smtp_body(0))
            r.raise_for_status()
            created = r.json()
            obj = dict(created)
            obj["status"] = be.status_body(created, 1)
            obj["status"]["testMemo"] = be.MEMO
            r = await http.put(f"{be.BASE}/relay-00000/status", json=obj,
                               params={"fieldManager": "smtpctl-operator"})
            r.raise_for_status()
            path.write_text(json.dumps({"created": created, "answer": r.json()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--bodies", type=Path, default=None,
                        help="bodies written by --capture (default: capture them now)")
    parser.add_argument("--capture", type=Path, default=None, metavar="FILE",
                        help="write the emulator's bodies to FILE and exit")
    parser.add_argument("--setup-only", action="store_true",
                        help="build the N bodies but run nothing (the baseline to subtract)")
    parser.add_argument("--controller", action="store_true",
                        help="watch events through a Reflector and Controller.handle, "
                        "and the CPU per step")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="import reconciler from this source tree (default: this one)")
    args = parser.parse_args()
    if args.capture is not None:
        asyncio.run(capture(args.capture))
        return 0
    bodies = args.bodies
    if bodies is None:
        tmp = Path(tempfile.mkdtemp(prefix="smtpctl-bench-store-")) / "bodies.json"
        asyncio.run(capture(tmp))
        bodies = tmp
    sys.path.insert(0, str(args.root.resolve()))
    import orjson

    from reconciler.stores import kube
    from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject, TestMemo
    from reconciler.stores.kubeapi import _watch_event

    doc = json.loads(bodies.read_text())
    created, answer = doc["created"], doc["answer"]
    n = args.count
    added, answers, echoes = [], [], []
    for i in range(n):
        c, a = copy.deepcopy(created), copy.deepcopy(answer)
        for d in (c, a):
            d["metadata"]["name"] = f"relay-{i:05d}"
            d["metadata"]["uid"] = f"uid-{i:05d}"
        c["metadata"]["resourceVersion"] = str(10 * i + 1)
        a["metadata"]["resourceVersion"] = str(10 * i + 2)
        added.append(orjson.dumps({"type": "ADDED", "object": c}))
        answers.append(orjson.dumps(a))
        echoes.append(orjson.dumps({"type": "MODIFIED", "object": a}))
    status = {k: v for k, v in answer["status"].items() if k != kube.MEMO_FIELD}
    write = StatusWrite(status=status, memo=TestMemo.from_json(answer["status"]["testMemo"]))

    class Api:  # KubeApi.put without the HTTP: encode the body, decode the answer
        i = 0

        async def put(self, _path: str, body: Any) -> dict[str, Any]:
            orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            return orjson.loads(answers[self.i])  # type: ignore[no-any-return]

    api = Api()
    store = kube.KubeStore(api)  # type: ignore[arg-type]
    held: list[StoredObject | None] = []
    steps = {"added": 0.0, "write": 0.0, "echo": 0.0}  # CPU seconds (--controller)

    async def run() -> None:
        for i in range(n):
            obj = _watch_event(added[i], "watch")["object"]
            store.observe(obj)
            ref = kube.ref_of(obj)
            held.append(await store.get(ref))  # the engine holds it while it reconciles
            api.i = i
            held.append(await store.update_status(ref, lambda _cur: write))
            store.observe(_watch_event(echoes[i], "watch")["object"])
            held.clear()

    async def run_controller() -> None:
        """The same through the operator's reflector and controller."""
        from reconciler.runtimes.metrics import OperatorMetrics
        from reconciler.runtimes.operator.main import build
        from reconciler.runtimes.operator.settings import OperatorConfig
        from reconciler.runtimes.operator.watching import Reflector
        from reconciler.stores.kubeapi import Credentials, KubeApi

        creds = Credentials(server="https://127.0.0.1:9", token="bench")  # never contacted
        parts = build(OperatorConfig(namespaces=[created["metadata"]["namespace"]]),
                      OperatorMetrics(), creds, version_key=b"bench",
                      api=KubeApi(creds))
        ctl, cstore = parts.controller, parts.store
        cstore.api = api  # type: ignore[assignment]
        refl = Reflector(parts.api, "watch", ctl.handle, kind=created["kind"],
                         api_version=created["apiVersion"])
        clock = time.process_time
        for i in range(n):
            t0 = clock()
            refl.dispatch(_watch_event(added[i], "watch"))
            t1 = clock()
            ref = ObjectRef(created["kind"], created["metadata"]["namespace"],
                            f"relay-{i:05d}")
            held.append(await cstore.get(ref))
            api.i = i
            held.append(await cstore.update_status(ref, lambda _cur: write))
            t2 = clock()
            refl.dispatch(_watch_event(echoes[i], "watch"))
            t3 = clock()
            held.clear()
            steps["added"] += t1 - t0
            steps["write"] += t2 - t1
            steps["echo"] += t3 - t2
        assert len(cstore.cached_objects()) == n
        await ctl.stop()
        await parts.api.close()

    if args.setup_only:
        return 0
    if args.controller:  # its imports before the clock starts
        importlib.import_module("reconciler.runtimes.operator.main")
    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(run_controller() if args.controller else run())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not args.controller:
        assert len(store.cached_objects()) == n
    out: dict[str, Any] = {"count": n, "root": str(args.root), "bytes": {
        "added_line": len(added[0]), "status_put_answer": len(answers[0]),
        "echo_line": len(echoes[0])},
        "cpu_us_per_resource": round(cpu / n * 1e6, 1),
        "wall_us_per_resource": round(wall / n * 1e6, 1)}
    if args.controller:
        out["controller_cpu_us_per_resource"] = {k: round(v / n * 1e6, 1)
                                                 for k, v in steps.items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
