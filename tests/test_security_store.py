"""Trust in the local state directory (issue 9, medium: "the local state directory is
trusted blindly"): owner and mode checks like ssh's, 0600 for every file, a parse cache
that cannot change where credentials go, corruption reported with exit 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.devservers.smtp import RelayServer
from reconciler.stores.local import LocalStore, StoreUntrusted
from tests.support import canary

USER = "app@example.test"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    canary.assert_no_canary(out.getvalue(), where="smtpctl output")
    return code, out.getvalue()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_of_a_new_store_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    """WAL and SHM were created 0644 (SQLite gives them the database's mode, which was
    chmod'ed only after they existed)."""
    state = tmp_path / "state"
    with umask(0), LocalStore(state) as store:
        store.upsert_many([{"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                            "metadata": {"name": "a"}, "spec": {"host": "h"}}])
        store.lock(1)
        files = {p.name: mode(p) for p in state.iterdir()}
    assert mode(state) == 0o700
    assert {"state.db", "state.db-wal", "state.db-shm", "version.key", "apply.lock"} <= set(files)
    assert set(files.values()) == {0o600}, files


def test_an_older_store_is_tightened_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    LocalStore(state).close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (state / name).exists():
            os.chmod(state / name, 0o644)
    LocalStore(state).close()
    assert mode(state / "state.db") == 0o600


@pytest.mark.parametrize("what", ["dir-group-writable", "db-world-writable", "key-readable",
                                  "db-foreign-owner", "dir-foreign-owner", "db-symlink",
                                  "parent-world-writable"])
def test_a_state_directory_others_could_change_is_refused(tmp_path: Path, what: str) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    state = parent / "state"
    LocalStore(state).close()
    if what == "dir-group-writable":
        state.chmod(0o770)
    elif what == "db-world-writable":
        (state / "state.db").chmod(0o666)
    elif what == "key-readable":
        (state / "version.key").chmod(0o644)
    elif what == "db-foreign-owner":
        os.chown(state / "state.db", 12345, 12345)
    elif what == "dir-foreign-owner":
        os.chown(state, 12345, 12345)
    elif what == "db-symlink":
        real = tmp_path / "elsewhere.db"
        (state / "state.db").rename(real)
        (state / "state.db").symlink_to(real)
    else:
        parent.chmod(0o777)
    with pytest.raises(StoreUntrusted) as exc:
        LocalStore(state)
    assert ("chmod" in str(exc.value) or "chown" in str(exc.value)
            or "symbolic link" in str(exc.value))
    code, out = run("get", "all", "--state", str(state))
    assert code == 2 and "Traceback" not in out
    assert str(parent) in out


# --- the poisoned parse cache ----------------------------------------------------------------


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RelayServer, RelayServer]]:
    monkeypatch.setenv("SMTP_PW", canary.PASSWORD)
    monkeypatch.setenv("SMTPCTL_ALLOW_ENV", "SMTP_PW")
    with RelayServer(mode="starttls", users={USER: canary.PASSWORD}) as good, \
            RelayServer(mode="starttls", users={USER: canary.PASSWORD}, ca=good.ca) as evil:
        yield good, evil


def relay_doc(port: int, ca: Path) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": "mail"},
            "spec": {"host": "127.0.0.1", "port": port, "startTLS": True,
                     "authentication": "UsernamePassword", "username": USER,
                     "passwordFrom": {"env": "SMTP_PW"}, "refreshInterval": "1s",
                     "tls": {"caBundleFrom": {"file": str(ca)}, "serverName": "localhost"},
                     "connectionTest": {"timeoutSeconds": 5, "checkRelay": False}}}


def test_a_poisoned_parse_cache_cannot_redirect_the_password(
        tmp_path: Path, relays: tuple[RelayServer, RelayServer]) -> None:
    """A writable state directory with a poisoned parse cache redirected the password to
    another relay on the next apply.  The cache entry carries an HMAC keyed by the store's
    version.key; an entry edited by anyone without the key is ignored."""
    good, evil = relays
    ca = tmp_path / "ca.pem"
    ca.write_text(good.ca_pem)
    manifest = tmp_path / "relay.yaml"
    manifest.write_text(yaml.safe_dump(relay_doc(good.port, ca)))
    state = tmp_path / "state"
    code, out = run("apply", "-f", str(manifest), "--state", str(state))
    assert code == 0, out
    db = sqlite3.connect(state / "state.db")
    (digest, row), = db.execute("SELECT digest, manifests FROM input_cache").fetchall()
    poisoned = row.replace(f'"port":{good.port}', f'"port":{evil.port}').replace(
        f'\\"port\\":{good.port}', f'\\"port\\":{evil.port}')
    assert poisoned != row
    db.execute("UPDATE input_cache SET manifests=? WHERE digest=?", (poisoned, digest))
    db.commit()
    db.close()
    code, out = run("apply", "-f", str(manifest), "--state", str(state))
    assert code == 0, out
    assert evil.connections == 0 and evil.auth_attempts == []


# --- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "dropped-table"])
@pytest.mark.parametrize("command", [["get", "all"], ["describe", "esmtp", "x"],
                                     ["plan", "-f", "{manifest}"], ["apply", "-f", "{manifest}"],
                                     ["reconcile"]])
def test_a_damaged_store_is_a_clear_error_with_exit_2(tmp_path: Path, damage: str,
                                                      command: list[str]) -> None:
    """A 0-byte state.db was silently an empty store; a damaged one printed "No resources
    found" (exit 0) or a raw sqlite traceback; `plan` on a bad state directory crashed."""
    state = tmp_path / "state"
    manifest = tmp_path / "m.yaml"
    doc = relay_doc(9, tmp_path / "ca.pem")
    manifest.write_text(yaml.safe_dump(doc))
    with LocalStore(state) as store:
        store.upsert_many([json.loads(json.dumps(doc)) | {"metadata": {"name": f"r{i}",
                                                                        "namespace": "default"}}
                           for i in range(200)])
    db_path = state / "state.db"
    for extra in ("state.db-wal", "state.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            (state / extra).unlink()
    if damage == "empty":
        db_path.write_bytes(b"")
    elif damage == "garbage":
        db_path.write_bytes(b"\x00garbage" * 4096)
    elif damage == "truncated":
        data = db_path.read_bytes()
        db_path.write_bytes(data[: len(data) // 2])
    else:
        db = sqlite3.connect(db_path)
        db.execute("DROP TABLE resources")
        db.commit()
        db.close()
    os.chmod(db_path, 0o600)
    argv = [a.replace("{manifest}", str(manifest)) for a in command]
    code, out = run(*argv, "--state", str(state))
    assert code == 2, (argv, out)
    assert "Traceback" not in out and "No resources found" not in out
    assert "damaged" in out and str(state) in out, out
