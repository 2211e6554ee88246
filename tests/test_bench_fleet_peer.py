"""bench/fleet_spawned.py: the bound peer's plumbing (what it validates, how it deals the
tests, that it contacts no relay before the whole input validated, one test per relay).
Its speed is measured in bench/fleet.py, never here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from reconciler.devservers.smtp import RelayServer

ROOT = Path(__file__).resolve().parents[1]
SPAWNED = ROOT / "bench" / "fleet_spawned.py"
USER, PASSWORD = "fleet@example.test", "peer-test-password"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fleet_spawned", SPAWNED)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peer = _module()


def manifest(name: str, port: int, ca: Path, *, extra: str = "") -> str:
    return f"""apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: {name}
spec:
  host: 127.0.0.1
  port: {port}
  authentication: UsernamePassword
  startTLS: true
  username: {USER}
  passwordFrom: {{env: FLEET_PW}}
  tls: {{caBundleFrom: {{file: {ca}}}}}
{extra}"""


def test_a_valid_fleet_validates_in_order(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    docs = peer.validate("---\n".join(manifest(f"r{i}", 2525, ca) for i in range(3)).encode())
    assert [d["metadata"]["name"] for d in docs] == ["r0", "r1", "r2"]


@pytest.mark.parametrize(("last", "problem"), [
    ("  port: 70000\n", "document 3"),  # the schema's maximum (an invalid spec)
    ("  colour: blue\n", "document 3"),  # additionalProperties: false
])
def test_the_last_document_invalid_fails_the_whole_input(tmp_path: Path, last: str,
                                                         problem: str) -> None:
    ca = tmp_path / "ca.pem"
    text = "---\n".join([manifest("r0", 2525, ca), manifest("r1", 2525, ca),
                         manifest("r2", 2525, ca).replace("  port: 2525\n", "") + last])
    with pytest.raises(peer.InvalidInput, match=problem):
        peer.validate(text.encode())


def test_a_name_defined_twice_is_invalid(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    text = "---\n".join([manifest("r0", 2525, ca), manifest("r0", 2525, ca)])
    with pytest.raises(peer.InvalidInput, match="defined twice"):
        peer.validate(text.encode())


def test_another_kind_is_invalid() -> None:
    with pytest.raises(peer.InvalidInput, match="not an ExternalSmtp"):
        peer.validate(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")


@pytest.mark.parametrize(("items", "clients"), [(10, 3), (1000, 2), (2, 3), (0, 1)])
def test_split_deals_every_test_once(items: int, clients: int) -> None:
    parts = peer.split(list(range(items)), clients)
    assert len(parts) == clients
    assert sorted(x for p in parts for x in p) == list(range(items))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize(("concurrency", "clients", "expected"),
                         [(32, 2, [16, 16]), (32, 3, [11, 11, 10]), (2, 3, [1, 1, 1])])
def test_shares_keep_the_total_in_flight(concurrency: int, clients: int,
                                         expected: list[int]) -> None:
    assert peer.shares(concurrency, clients) == expected


def _run(tmp_path: Path, text: str, password: str, workers: int = 2,
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    stats = tmp_path / "stats.json"
    env = dict(os.environ, FLEET_PW=password)
    proc = subprocess.run(
        [sys.executable, "-P", str(SPAWNED), "cold", str(stats), str(fleet),
         "--workers", str(workers), "--concurrency", "4"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    return proc, json.loads(stats.read_text())


def test_each_relay_is_tested_once_and_passes(tmp_path: Path) -> None:
    with RelayServer(mode="starttls", users={USER: PASSWORD}) as relay:
        ca = tmp_path / "ca.pem"
        ca.write_text(relay.ca_pem)
        text = "---\n".join(manifest(f"r{i}", relay.port, ca) for i in range(5))
        proc, stats = _run(tmp_path, text, PASSWORD)
        assert proc.returncode == 0, proc.stderr
        assert relay.connections == 5
    workers = stats["workers"]
    assert isinstance(workers, list)
    assert sorted(w["tests"] for w in workers) == [2, 3]
    assert sum(w["passed"] for w in workers) == 5


def test_an_invalid_input_contacts_no_relay(tmp_path: Path) -> None:
    with RelayServer(mode="starttls", users={USER: PASSWORD}) as relay:
        ca = tmp_path / "ca.pem"
        ca.write_text(relay.ca_pem)
        docs = [manifest(f"r{i}", relay.port, ca) for i in range(4)]
        docs.append(manifest("r4", relay.port, ca).replace("startTLS: true", "startTLS: 7"))
        proc, stats = _run(tmp_path, "---\n".join(docs), PASSWORD)
        assert proc.returncode == 1
        assert "invalid input: document 5" in proc.stderr
        assert relay.connections == 0
    assert stats["workers"] == []


def test_a_failed_test_fails_the_peer(tmp_path: Path) -> None:
    with RelayServer(mode="starttls", users={USER: PASSWORD}) as relay:
        ca = tmp_path / "ca.pem"
        ca.write_text(relay.ca_pem)
        text = "---\n".join(manifest(f"r{i}", relay.port, ca) for i in range(2))
        proc, _ = _run(tmp_path, text, "not-the-password", workers=1)
        assert proc.returncode == 2
        assert "0 of 2 tests passed" in proc.stderr
        assert relay.connections >= 2
