"""The embedded store: SQLite in the state directory (``--state DIR``, default ./.smtpctl).

Why SQLite: one file, transactional, crash-safe (WAL journal; a process killed at any
instant leaves the last committed state), readable by ``get``/``describe`` while an
``apply`` runs, and in the standard library.

Layout of the state directory::

    state.db      the database (WAL mode: also state.db-wal, state.db-shm)
    version.key   0600: the HMAC key of secret versions (``reconciler.secret``), random,
                  created once so that versions are stable across runs (otherwise every
                  apply would look like a rotation and re-test everything)
    apply.lock    ``fcntl.flock`` target: two applies on one store never interleave

What is stored per resource: the last applied manifest (references only - a manifest can
never hold a secret value, the models reject literal secrets), the generation (bumped
only when the spec changes), the creation time, the status, the test memo (digest, due
time) and a short history of redacted test records and events.  Never a secret value:
``tests/test_store_local.py`` and the end-to-end tests grep the database file for canaries.

Schema migrations are versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` is an
append-only list; opening a store applies the missing ones in one transaction, and
refuses a store written by a newer release (exit 2 with a clear message).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.credentials.policy import MANIFEST_ANNOTATION
from reconciler.secret import set_version_key
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusMutator,
    StoredObject,
    StoreError,
    TestMemo,
    TestRecord,
)

DB_NAME = "state.db"
KEY_NAME = "version.key"
LOCK_NAME = "apply.lock"
HISTORY_KEEP = 10  # test records kept per resource
INPUT_CACHE_KEEP = 4  # validated input sets kept (apply of an unchanged repo skips YAML)
EVENTS_KEEP = 50  # events kept per resource

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE resources (
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        uid TEXT NOT NULL, generation INTEGER NOT NULL, created_at TEXT NOT NULL,
        manifest TEXT NOT NULL, status TEXT NOT NULL DEFAULT '{}', memo TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (kind, namespace, name)
    );
    CREATE TABLE tests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        generation INTEGER NOT NULL, at TEXT NOT NULL, passed INTEGER NOT NULL,
        reason TEXT NOT NULL, record TEXT NOT NULL
    );
    CREATE INDEX tests_by_ref ON tests (kind, namespace, name, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        at TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL
    );
    CREATE INDEX events_by_ref ON events (kind, namespace, name, id);
    """,
    # 2: parse cache of validated input sets (manifests hold references only, never a
    #    secret value: the models reject literal secrets)
    """
    CREATE TABLE input_cache (
        digest TEXT PRIMARY KEY, manifests TEXT NOT NULL, at REAL NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class LockTimeout(StoreError):
    """Another apply holds the store's lock."""


@dataclass(frozen=True, slots=True)
class Upserted:
    obj: StoredObject
    change: str  # created | configured (spec changed) | unchanged | metadata


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _spec_of(manifest: dict[str, Any]) -> str:
    return _dumps(manifest.get("spec") or {})


def _without_origin(manifest: dict[str, Any]) -> str:
    """The manifest without the loader's record of its file (see credentials.policy)."""
    meta = dict(manifest.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != MANIFEST_ANNOTATION}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return _dumps({**manifest, "metadata": meta})


def load_version_key(state: Path) -> bytes:
    """The secret-version HMAC key of this state directory (created 0600 on first use).

    Created atomically (a complete temporary file hard-linked into place), so a process
    killed at any instant leaves either no key or a whole one, and two processes racing
    to create it agree on the first one.
    """
    path = state / KEY_NAME
    if not path.exists():
        tmp = state / f".{KEY_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32).hex().encode())
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    key = path.read_bytes()
    if len(key) < 32:
        raise StoreError(f"{path} is damaged (too short); delete it to start over "
                         "(every resource will be re-tested once)")
    return key


class LocalStore:
    """The SQLite store; implements :class:`reconciler.stores.base.Store`.

    One connection, used from one thread (the event loop's).  Transactions are short and
    synchronous: ``BEGIN IMMEDIATE`` takes the write lock up front so a read-modify-write
    never fails half-way with SQLITE_BUSY.
    """

    def __init__(self, state: str | os.PathLike[str], *, install_key: bool = True,
                 create: bool = True) -> None:
        self.state = Path(state)
        if not self.state.exists():
            if not create:
                raise StoreError(f"no state directory at {self.state} (run `smtpctl apply` "
                                 "first, or pass --state)")
            self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        if install_key:
            set_version_key(load_version_key(self.state))
        self.path = self.state / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._lock_fd: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    def _migrate(self) -> None:
        current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} has schema version {current}, newer than this "
                f"smtpctl understands ({SCHEMA_VERSION}); upgrade smtpctl")
        if current == SCHEMA_VERSION:
            return
        with self._tx():
            current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for i in range(current, SCHEMA_VERSION):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.unlock()
        self._db.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def lock(self, timeout: float) -> None:
        """Take the exclusive apply lock, waiting up to ``timeout`` seconds."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.state / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"another smtpctl apply is using {self.state} (waited {timeout:g}s); "
                        "wait for it to finish or raise --lock-timeout") from None
                time.sleep(0.05)
        self._lock_fd = fd

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the apply lock for a block (a watch pass), then release it."""
        held = self._lock_fd is not None
        self.lock(timeout)
        try:
            yield
        finally:
            if not held:
                self.unlock()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- rows -----------------------------------------------------------------------

    _COLS = "kind, namespace, name, uid, generation, created_at, manifest, status, memo, version"

    @staticmethod
    def _row(row: tuple[Any, ...]) -> StoredObject:
        kind, ns, name, uid, gen, created, manifest, status, memo, version = row
        return StoredObject(
            ref=ObjectRef(kind, ns, name), manifest=json.loads(manifest), generation=int(gen),
            created_at=created, status=json.loads(status),
            memo=TestMemo.from_json(json.loads(memo)) if memo else None,
            version=str(version), uid=uid)

    def get_sync(self, ref: ObjectRef) -> StoredObject | None:
        row = self._db.execute(
            f"SELECT {self._COLS} FROM resources WHERE kind=? AND namespace=? AND name=?",  # noqa: S608
            (ref.kind, ref.namespace, ref.name)).fetchone()
        return self._row(row) if row else None

    def list_sync(self, kind: str | None = None, namespace: str | None = None
                  ) -> list[StoredObject]:
        sql = f"SELECT {self._COLS} FROM resources WHERE 1=1"  # noqa: S608
        args: list[Any] = []
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if namespace is not None:
            sql += " AND namespace=?"
            args.append(namespace)
        sql += " ORDER BY namespace, name, kind"
        return [self._row(r) for r in self._db.execute(sql, args)]

    def upsert_many(self, manifests: list[dict[str, Any]], *, now: float | None = None
                    ) -> list[Upserted]:
        """Insert or update manifests in one transaction (the generation rule of Kubernetes:
        it increments only when ``spec`` changes).  Returns the objects as stored."""
        now = time.time() if now is None else now
        out: list[Upserted] = []
        with self._tx() as db:
            for m in manifests:
                meta = m.get("metadata") or {}
                ref = ObjectRef(str(m["kind"]), str(meta.get("namespace", "default")),
                                str(meta["name"]))
                clean: dict[str, Any] = {k: m[k] for k in ("apiVersion", "kind", "metadata",
                                                           "spec") if k in m}
                clean["metadata"] = {k: v for k, v in meta.items()
                                     if k not in ("generation", "uid", "resourceVersion",
                                                  "creationTimestamp")}
                clean["metadata"].setdefault("namespace", ref.namespace)
                row = db.execute(
                    f"SELECT {self._COLS} FROM resources "  # noqa: S608
                    "WHERE kind=? AND namespace=? AND name=?",
                    (ref.kind, ref.namespace, ref.name)).fetchone()
                text = _dumps(clean)
                if row is None:
                    uid, created = str(uuid.uuid4()), _rfc3339(now)
                    db.execute(
                        "INSERT INTO resources (kind, namespace, name, uid, generation, "
                        "created_at, manifest) VALUES (?,?,?,?,?,?,?)",
                        (ref.kind, ref.namespace, ref.name, uid, 1, created, text))
                    out.append(Upserted(StoredObject(ref, clean, 1, created, {}, None, "1", uid),
                                        "created"))
                    continue
                _k, _n, _nm, uid, gen, created, old_text, status, memo, version = row
                gen, version = int(gen), int(version)
                if old_text == text:
                    change = "unchanged"
                elif _without_origin(json.loads(old_text)) == _without_origin(clean):
                    # Only where the manifest file lives changed (a new checkout path):
                    # remember it for the source policy, but it is not a change.
                    db.execute(
                        "UPDATE resources SET manifest=? WHERE kind=? AND namespace=? AND name=?",
                        (text, ref.kind, ref.namespace, ref.name))
                    change = "unchanged"
                else:
                    spec_changed = _spec_of(json.loads(old_text)) != _spec_of(clean)
                    gen += 1 if spec_changed else 0
                    version += 1
                    db.execute(
                        "UPDATE resources SET manifest=?, generation=?, version=? "
                        "WHERE kind=? AND namespace=? AND name=?",
                        (text, gen, version, ref.kind, ref.namespace, ref.name))
                    change = "configured" if spec_changed else "metadata"
                obj = StoredObject(
                    ref, clean, gen, created, json.loads(status),
                    TestMemo.from_json(json.loads(memo)) if memo else None, str(version), uid)
                out.append(Upserted(obj, change))
        return out

    def cached_input(self, digest: str) -> list[dict[str, Any]] | None:
        """The validated manifests of an input set applied before (see runtimes.local)."""
        row = self._db.execute("SELECT manifests FROM input_cache WHERE digest=?",
                               (digest,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return data if isinstance(data, list) else None

    def cache_input(self, digest: str, manifests: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO input_cache (digest, manifests, at) "
                       "VALUES (?,?,?)", (digest, _dumps(manifests), time.time()))
            db.execute("DELETE FROM input_cache WHERE digest NOT IN (SELECT digest FROM "
                       "input_cache ORDER BY at DESC LIMIT ?)", (INPUT_CACHE_KEEP,))

    def delete_sync(self, ref: ObjectRef) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                             (ref.kind, ref.namespace, ref.name))
            db.execute("DELETE FROM tests WHERE kind=? AND namespace=? AND name=?",
                       (ref.kind, ref.namespace, ref.name))
            return cur.rowcount > 0

    def update_status_sync(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        with self._tx():
            cur = self.get_sync(ref)
            if cur is None:
                return None
            write = mutate(cur)
            if write is None:
                return cur
            self._db.execute(
                "UPDATE resources SET status=?, memo=?, version=version+1 "
                "WHERE kind=? AND namespace=? AND name=?",
                (_dumps(write.status), _dumps(write.memo.to_json()) if write.memo else None,
                 ref.kind, ref.namespace, ref.name))
        return StoredObject(ref=cur.ref, manifest=cur.manifest, generation=cur.generation,
                            created_at=cur.created_at, status=write.status, memo=write.memo,
                            version=str(int(cur.version) + 1), uid=cur.uid)

    def tests_sync(self, ref: ObjectRef, limit: int = HISTORY_KEEP) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT record FROM tests WHERE kind=? AND namespace=? AND name=? "
            "ORDER BY id DESC LIMIT ?", (ref.kind, ref.namespace, ref.name, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def events_sync(self, ref: ObjectRef, limit: int = 20) -> list[Event]:
        rows = self._db.execute(
            "SELECT at, type, reason, message FROM events WHERE kind=? AND namespace=? "
            "AND name=? ORDER BY id DESC LIMIT ?",
            (ref.kind, ref.namespace, ref.name, limit)).fetchall()
        return [Event(ref, t, reason, msg, at) for at, t, reason, msg in reversed(rows)]

    # --- the Store protocol ---------------------------------------------------------

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        return self.get_sync(ref)

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        return self.list_sync(kind, namespace)

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        return self.update_status_sync(ref, mutate)

    async def record_test(self, record: TestRecord) -> None:
        r = record.ref
        with self._tx() as db:
            db.execute(
                "INSERT INTO tests (kind, namespace, name, generation, at, passed, reason, "
                "record) VALUES (?,?,?,?,?,?,?,?)",
                (r.kind, r.namespace, r.name, record.generation, record.at,
                 int(record.passed), record.reason, _dumps(record.to_json())))
            db.execute(
                "DELETE FROM tests WHERE kind=? AND namespace=? AND name=? AND id NOT IN "
                "(SELECT id FROM tests WHERE kind=? AND namespace=? AND name=? "
                "ORDER BY id DESC LIMIT ?)",
                (r.kind, r.namespace, r.name, r.kind, r.namespace, r.name, HISTORY_KEEP))

    async def record_event(self, event: Event) -> None:
        r = event.ref
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (kind, namespace, name, at, type, reason, message) "
                "VALUES (?,?,?,?,?,?,?)",
                (r.kind, r.namespace, r.name, event.at, event.type, event.reason,
                 event.message))
            if (cur.lastrowid or 0) % 64 == 0:  # trim now and then, not on every insert
                db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() "
                    "OVER (PARTITION BY kind, namespace, name ORDER BY id DESC) AS rn "
                    "FROM events) WHERE rn > ?)", (EVENTS_KEEP,))


