"""Benchmark `smtpctl validate` against check-jsonschema and a bare floor script.

    ./dev bench validate [--count 10000] [--runs 3] [--markdown docs/benchmarks/validate.md]

Generates COUNT ExternalSmtp manifests (80% valid, 20% invalid in ten different ways,
every invalid one a JSON Schema violation so all tools should agree on the count) as
COUNT small files and as one multi-document stream, then measures, in one run, side by
side:

* ``smtpctl validate`` (positions, messages, semantic checks, JSON output);
* ``check-jsonschema --schemafile schemas/externalsmtp.v1alpha1.json FILES...`` (PyPI);
* the floor: a bare script that only parses (PyYAML C loader) and runs a compiled
  jsonschema_rs validator, with no positions and no messages.

For each: wall time (best of RUNS), manifests per second, peak RSS of the process
(``/usr/bin/time -f %M`` when present, else ``getrusage`` of children), and the number of
invalid documents it found.  Then the one-file cold start (median of 15 runs) against
``python -c pass`` and check-jsonschema.  Ratios are printed against check-jsonschema
and the floor.

``--installs`` measures instead what a user gets (issue 15, "cold start as users get it"):
it builds the wheel, installs it into fresh virtual environments the regular way (pip
compiles the bytecode at install), once with the core dependencies only (the light
install ``validate`` needs) and once with ``[all]``, and reports their size and package
count, and the one-file ``smtpctl validate`` cold start (median of ``--starts``) of the
light install next to ``./dev``'s editable ``.venv``, in this environment (which sets
``PYTHONDONTWRITEBYTECODE=1``, as this machine does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA = ROOT / "schemas" / "externalsmtp.v1alpha1.json"
API = "smtp.reconciler.dev/v1alpha1"

FLOOR = r'''
import sys, json, yaml, jsonschema_rs
v = jsonschema_rs.validator_for(json.load(open(sys.argv[1])))
bad = docs = 0
for path in sys.argv[2:]:
    with open(path, "rb") as fh:
        for doc in yaml.load_all(fh, Loader=yaml.CSafeLoader):
            if doc is None:
                continue
            docs += 1
            bad += not v.is_valid(doc)
print(json.dumps({"documents": docs, "invalid": bad}))
'''


def manifest(i: int, rng: random.Random) -> dict[str, Any]:
    """One valid manifest, shaped like one of the five examples."""
    shape = i % 5
    spec: dict[str, Any]
    if shape == 0:
        spec = {"host": "smtp.gmail.com", "port": 587, "startTLS": True,
                "authentication": "UsernamePassword", "username": f"user{i}@example.com",
                "passwordFrom": {"secretKeyRef": {"name": f"gmail-{i}", "key": "password"}}}
    elif shape == 1:
        spec = {"host": "smtp.office365.com", "port": 587, "startTLS": True,
                "authentication": "OAuth2", "username": f"box{i}@contoso.com",
                "oauth2ProviderRef": {"name": "m365"}, "connectionTest": {"checkRelay": True}}
    elif shape == 2:
        spec = {"host": f"email-smtp.{rng.choice(['eu-west-1', 'us-east-1'])}.amazonaws.com",
                "port": 465, "authentication": "UsernamePassword", "username": "AKIAEXAMPLE",
                "socketFactory": {"class": "javax.net.ssl.SSLSocketFactory", "port": 465,
                                  "fallback": False},
                "from": f"billing{i}@example.com", "passwordFrom": {"env": "SES_PASSWORD"},
                "refreshInterval": rng.choice(["1h", "6h", "30m"])}
    elif shape == 3:
        spec = {"host": "smtp.sendgrid.net", "port": 587, "startTLS": True,
                "authentication": "UsernamePassword", "username": "apikey",
                "from": f"no-reply{i}@example.com",
                "passwordFrom": {"file": "/var/run/secrets/sendgrid/api-key"},
                "connectionTest": {"probeRecipient": "postmaster@example.com",
                                   "timeoutSeconds": 20}}
    else:
        spec = {"host": f"relay{i % 50}.internal.example.com", "port": 25,
                "authentication": "None", "from": f"alerts{i}@example.com"}
    return {"apiVersion": API, "kind": "ExternalSmtp",
            "metadata": {"name": f"relay-{i}", "namespace": f"team-{i % 20}",
                         "labels": {"app": "billing", "tier": str(i % 3)}},
            "spec": spec}


def _break(doc: dict[str, Any], how: int) -> None:
    spec = doc["spec"]
    if how == 0:
        spec["port"] = 70000
    elif how == 1:
        spec["host"] = spec["host"] + ":587"
    elif how == 2:
        spec["authentication"] = "UsernamePassword"
        spec.pop("passwordFrom", None)
        spec.pop("oauth2ProviderRef", None)
        spec["username"] = "u@example.com"
    elif how == 3:
        spec["password"] = "not-a-secret"
    elif how == 4:
        spec["startTls"] = True
    elif how == 5:
        spec["authentication"] = "Basic"
    elif how == 6:
        spec["startTLS"] = "true"
    elif how == 7:
        spec["socketFactory"] = {"class": "javax.net.ssl.SSLSocketFactory"}
    elif how == 8:
        spec["refreshInterval"] = "1 hour"
    else:
        doc["metadata"]["name"] = "Relay_" + doc["metadata"]["name"]


def generate(count: int, out: Path, seed: int = 7) -> tuple[list[str], Path, int]:
    rng = random.Random(seed)
    files: list[str] = []
    stream = []
    invalid = 0
    (out / "files").mkdir(parents=True)
    for i in range(count):
        doc = manifest(i, rng)
        if rng.random() < 0.2:
            _break(doc, rng.randrange(10))
            invalid += 1
        text = yaml.safe_dump(doc, sort_keys=False)
        path = out / "files" / f"relay-{i:05d}.yaml"
        path.write_text(text)
        files.append(str(path))
        stream.append(text)
    stream_path = out / "stream.yaml"
    stream_path.write_text("---\n".join(stream))
    return files, stream_path, invalid


def _timed(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall seconds, peak RSS in KiB, the completed process."""
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists()
                                        else None)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        full = [time_bin, "-q", "-f", "%M", "-o", rss_file.name, *cmd] if time_bin else cmd
        start = time.perf_counter()
        proc = subprocess.run(full, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if time_bin:
            text = Path(rss_file.name).read_text().strip().splitlines()
            rss = int(text[-1]) if text and text[-1].isdigit() else 0
        else:
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, rss, proc


def best(cmd: list[str], runs: int) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    results = [_timed(cmd) for _ in range(runs)]
    wall = min(r[0] for r in results)
    rss = max(r[1] for r in results)
    return wall, rss, results[-1][2]


def cold(cmd: list[str], n: int = 15) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _smtpctl_invalid(proc: subprocess.CompletedProcess[str]) -> int | str:
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return f"failed (exit {proc.returncode})"
    docs = {(e["file"], e["name"]) for e in report["diagnostics"] if e["severity"] == "error"}
    return len(docs)


def _cj_invalid(proc: subprocess.CompletedProcess[str]) -> int | str:
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        first = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return f"failed (exit {proc.returncode}: {first[0][:60]})"
    if report.get("parse_errors"):
        return "cannot parse the input"
    return len({e["filename"] for e in report.get("errors", [])})


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "free -h": mem.strip(), "platform": platform.platform()}


def _run(cmd: list[str], **kw: Any) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


_VENV_TOOLS = ("pip-", "setuptools-", "wheel-")


def _site_size(venv: Path) -> tuple[int, int]:
    """(KiB of what was installed, installed distributions), pip/setuptools excluded
    (they come with every venv): the files each distribution's RECORD lists, plus the
    bytecode pip compiled for them."""
    site = next(venv.glob("lib/python*/site-packages"))
    total = 0
    dists = [d for d in site.glob("*.dist-info") if not d.name.startswith(_VENV_TOOLS)]
    for d in dists:
        for line in (d / "RECORD").read_text().splitlines():
            path = site / line.split(",", 1)[0]
            if path.is_file():
                total += path.stat().st_size
    return total // 1024, len(dists)


def cold_cpu(cmd: list[str], n: int) -> tuple[float, float]:
    """(median wall, median CPU user+sys) of ``n`` runs of ``cmd``.  CPU time is what a
    loaded machine does not inflate; wall time is what a user waits."""
    walls, cpus = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def installs(starts: int, markdown: Path | None) -> int:
    """Light install size and the cold start of a regular (wheel) install vs ./dev's."""
    with tempfile.TemporaryDirectory(prefix="bench-installs-") as tmp:
        work = Path(tmp)
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
              str(work / "wheels"), str(ROOT)])
        wheel = next((work / "wheels").glob("smtpctl-*.whl"))
        sizes = {}
        for label, spec in (("core (validate, init, import)", str(wheel)),
                            ("[all] (every command)", f"{wheel}[all]")):
            venv = work / ("core" if "core" in label else "all")
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(venv / "bin" / "pip"), "install", "-q", "-c",
                  str(ROOT / "constraints.txt"), spec])
            sizes[label] = _site_size(venv)
        one = work / "relay.yaml"
        one.write_text(yaml.safe_dump(manifest(0, random.Random(1))))
        core = work / "core" / "bin"
        dev = BIN
        env = dict(os.environ)
        cases = {
            "python -c pass (wheel venv)": [str(core / "python"), "-c", "pass"],
            "smtpctl validate, wheel install (core, bytecode compiled by pip)":
                [str(core / "smtpctl"), "validate", "-f", str(one)],
            "python -c pass (./dev .venv)": [str(dev / "python"), "-c", "pass"],
            "smtpctl validate, ./dev install (editable .venv)":
                [str(dev / "smtpctl"), "validate", "-f", str(one)],
        }
        for c in cases.values():  # warm the page cache and any bytecode writes once
            subprocess.run(c, capture_output=True, check=False, env=env)
        medians = {k: cold_cpu(c, starts) for k, c in cases.items()}
        load = os.getloadavg()
        proc = subprocess.run([str(core / "smtpctl"), "apply", "-f", str(one)],
                              capture_output=True, text=True, check=False)
    lines = ["| install | installed size | distributions |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v[0] / 1024:.1f} MiB | {v[1]} |" for k, v in sizes.items()]
    lines += ["", f"One-file cold start, median of {starts} "
              f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}, "
              f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
              f"{os.cpu_count()} CPUs):",
              "", "| command | wall (s) | CPU user+sys (s) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {w:.3f} | {c:.3f} |" for k, (w, c) in medians.items()]
    lines += ["", f"`smtpctl apply` in the light install: exit {proc.returncode}, "
              f"`{proc.stderr.strip()[:160]}`"]
    print("\n".join(lines))
    if markdown:
        markdown.write_text("\n".join(lines) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--installs", action="store_true",
                    help="measure the wheel installs (size, cold start) instead")
    ap.add_argument("--starts", type=int, default=21, help="--installs: cold starts per case")
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the best wall is kept")
    ap.add_argument("--markdown", type=Path, help="also write the results as Markdown here")
    ap.add_argument("--skip-check-jsonschema", action="store_true")
    args = ap.parse_args()
    if args.installs:
        return installs(args.starts, args.markdown)

    smtpctl = [str(BIN / "smtpctl"), "validate"]
    cj = [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), "-o", "json"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        work = Path(tmp)
        floor = work / "floor.py"
        floor.write_text(FLOOR)
        files, stream, expected_invalid = generate(args.count, work)
        print(f"generated {args.count} manifests ({expected_invalid} invalid) in {work}",
              file=sys.stderr)

        def run(tool: str, inp: str, cmd: list[str], count_invalid: Any) -> None:
            wall, rss, proc = best(cmd, args.runs)
            rows.append({"tool": tool, "input": inp, "wall": wall, "rss_mib": rss / 1024,
                         "rate": args.count / wall, "invalid": count_invalid(proc)})
            print(f"{tool:>16} {inp:<7} {wall:7.2f} s  {args.count / wall:9.0f}/s  "
                  f"{rss / 1024:6.0f} MiB  invalid={rows[-1]['invalid']}", file=sys.stderr)

        def floor_invalid(p: subprocess.CompletedProcess[str]) -> int | str:
            try:
                return int(json.loads(p.stdout)["invalid"])
            except (json.JSONDecodeError, KeyError):
                return f"failed (exit {p.returncode})"

        run("smtpctl", "files", [*smtpctl, "-f", str(work / "files"), "-o", "json"],
            _smtpctl_invalid)
        run("floor", "files", [sys.executable, str(floor), str(SCHEMA), *files], floor_invalid)
        if not args.skip_check_jsonschema:
            run("check-jsonschema", "files", [*cj, *files], _cj_invalid)
        run("smtpctl", "stream", [*smtpctl, "-f", str(stream), "-o", "json"], _smtpctl_invalid)
        run("floor", "stream", [sys.executable, str(floor), str(SCHEMA), str(stream)],
            floor_invalid)
        if not args.skip_check_jsonschema:
            run("check-jsonschema", "stream", [*cj, str(stream)], _cj_invalid)

        one = files[0]
        starts = {
            "python -c pass": cold([sys.executable, "-c", "pass"]),
            "smtpctl validate (1 file)": cold([*smtpctl, "-f", one]),
        }
        if not args.skip_check_jsonschema:
            starts["check-jsonschema (1 file)"] = cold([*cj, one])

    by = {(r["tool"], r["input"]): r for r in rows}
    lines = render(args, rows, by, starts, expected_invalid)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


def render(args: argparse.Namespace, rows: list[dict[str, Any]],
           by: dict[tuple[str, str], dict[str, Any]], starts: dict[str, float],
           expected_invalid: int) -> list[str]:
    m = machine()
    out = [
        f"Manifests: {args.count} ExternalSmtp ({expected_invalid} invalid, "
        f"{expected_invalid * 100 // max(args.count, 1)}%), best wall of {args.runs} run(s).",
        "",
        "| tool | input | wall (s) | manifests/s | peak RSS (MiB) | invalid found | "
        "speed vs check-jsonschema | time vs floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cj = by.get(("check-jsonschema", "files"))
        ok = isinstance(r["invalid"], int)
        vs_cj = f"{cj['wall'] / r['wall']:.1f}x" if cj and ok else "-"
        fl = by.get(("floor", r["input"]))
        vs_fl = f"{r['wall'] / fl['wall']:.2f}x" if fl and ok else "-"
        out.append(f"| {r['tool']} | {r['input']} | {r['wall']:.2f} | {r['rate']:.0f} | "
                   f"{r['rss_mib']:.0f} | {r['invalid']} | {vs_cj} | {vs_fl} |")
    out += ["", "One-file cold start (median of 15):", "",
            "| command | seconds |", "| --- | --- |"]
    out += [f"| {k} | {v:.3f} |" for k, v in starts.items()]
    out += ["", f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, "
            f"{m['platform']}", "", "```", m["free -h"], "```"]
    return out


if __name__ == "__main__":
    sys.exit(main())
