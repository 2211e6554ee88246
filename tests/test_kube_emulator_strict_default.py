"""The emulator is strict by default, and only its own unit tests may make it lenient.

A test that passes only because a stand-in is lenient is a bug: every entry point
(``EmulatorThread``, ``running_emulator``, ``python -m tests.support.kube_emulator``) serves
HTTPS with a private CA, authenticates every request and authorizes it by RBAC unless
``lenient=True`` is passed, and no file outside the emulator's own unit tests may pass it.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.kube_emulator import EmulatorThread, running_emulator

ROOT = Path(__file__).resolve().parent.parent

# The emulator's own unit tests (storage semantics, CRD admission, SSA rules) may use it.
ALLOWED = {
    "tests/support/kube_emulator.py",
    "tests/test_kube_emulator.py",
    "tests/test_kube_emulator_crd.py",
    "tests/test_kube_emulator_ssa.py",
    "tests/test_kube_emulator_strict_default.py",
}
LENIENCY = re.compile(r"\blenient\s*=\s*True\b|KubeEmulator\([^)]*\bsecure\s*=\s*False"
                      r"|\.secure\s*=\s*False\b|\bstrict\s*=\s*False\)\s*as\s")


def lenient_uses(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if LENIENCY.search(line)]


def test_the_pattern_finds_every_way_to_be_lenient() -> None:
    planted = ("with EmulatorThread(lenient=True) as kube:\n"
               "async with running_emulator(crd, lenient = True) as (emu, url):\n"
               "emu = KubeEmulator(secure=False)\n"
               "emu.secure = False\n"
               "for a, b in zip(x, y, strict=False):\n")
    assert len(lenient_uses(planted)) == 4


def test_no_product_test_or_benchmark_uses_the_leniency_switch() -> None:
    offenders = []
    for path in sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/**/*.py"),
                        *ROOT.glob("reconciler/**/*.py"), *ROOT.glob("hack/**/*")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{rel}: {line}" for line in lenient_uses(text)]
    assert offenders == []


def test_emulator_thread_is_strict_by_default() -> None:
    with EmulatorThread() as kube:
        assert kube.url.startswith("https://")
        assert kube.tls is not None
        with httpx.Client(base_url=kube.url,
                          verify=ssl.create_default_context(cafile=str(kube.tls.ca_file))) as http:
            assert http.get("/api/v1/namespaces").status_code == 401
            r = http.get("/api/v1/namespaces/default/secrets",
                         headers={"Authorization": f"Bearer {kube.admin_token}"})
            assert r.status_code == 200
            r = http.post("/api/v1/namespaces/nowhere/secrets", json={"metadata": {
                "name": "s"}}, headers={"Authorization": f"Bearer {kube.admin_token}"})
            assert r.status_code == 404  # namespaces must exist
    with pytest.raises(TypeError):
        EmulatorThread(strict=False)


async def test_running_emulator_is_strict_by_default() -> None:
    async with running_emulator(namespaces=("mail",)) as (emu, url):
        assert url.startswith("https://")
        async with httpx.AsyncClient(base_url=url, verify=emu.client_ssl_context()
                                     or False) as http:
            assert (await http.get("/api/v1/namespaces/mail/secrets")).status_code == 401
        async with httpx.AsyncClient(base_url=url, **emu.http_kwargs()) as http:
            assert (await http.get("/api/v1/namespaces/mail/secrets")).status_code == 200


def test_the_emulator_process_is_strict_by_default(tmp_path: Path) -> None:
    """``python -m tests.support.kube_emulator`` (what benchmarks run) prints its HTTPS URL
    and a cluster-admin kubeconfig with the CA."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.kube_emulator",
                             "--workdir", str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        kubeconfig = Path(proc.stdout.readline().strip())
        assert url.startswith("https://")
        cfg = yaml.safe_load(kubeconfig.read_text())
        ca = cfg["clusters"][0]["cluster"]["certificate-authority"]
        token = cfg["users"][0]["user"]["token"]
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=ca)) as http:
            assert http.get("/api/v1/namespaces").status_code == 401
            r = http.get("/api/v1/namespaces", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(20)
