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

Trust (docs/security.md), like ssh's ``StrictModes``: the state directory decides where
credentials go (it holds the manifests and the parse cache), so it and every file in it
must be owned by the user running smtpctl (or root) and writable by nobody else, its
parent must not let others rename it, and ``version.key`` must be readable by nobody
else; otherwise opening fails with a message that says what to fix.  Every file is
created 0600 (``state.db`` is created complete under a temporary name, so its ``-wal``
and ``-shm`` files, which SQLite creates with the database's mode, are 0600 too; older
stores are tightened on open).  The parse cache carries an HMAC with a key derived from
``version.key``: an entry someone else wrote is ignored.  Damage is detected and reported
(:class:`StoreError`, exit 2): a 0-byte ``state.db``, a file that is not a database,
missing tables, and any SQLite error later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import hmac
import json
import math
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

try:  # the rows' JSON is most of an unchanged re-apply's store time (see _loads)
    import orjson as _orjson
except ImportError:  # pragma: no cover - an install without the cli extra
    _orjson = None  # type: ignore[assignment]

from reconciler.secret import set_version_key
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusMutator,
    StoredObject,
    StoreError,
    TestMemo,
    TestRecord,
    manifest_ref,
)

if TYPE_CHECKING:
    import asyncio

    from reconciler.stores.base import StatusWrite

DB_NAME = "state.db"
KEY_NAME = "version.key"
LOCK_NAME = "apply.lock"
HISTORY_KEEP = 10  # test records kept per resource
INPUT_CACHE_KEEP = 4  # validated input sets kept (apply of an unchanged repo skips YAML)
EVENTS_KEEP = 50  # events kept per resource
EVENTS_TRIM_EVERY = 64  # events recorded between two trims (of the resources they name)
UPSERT_READ_CHUNK = 500  # names per query when upsert_many reads the rows already there

# The history trim of a test record, done by SQLite inside the record's INSERT (a TEMP
# trigger: it lives in this connection only, so the file's schema - what earlier and later
# versions of smtpctl open - is unchanged): the HISTORY_KEEP newest records of the resource
# stay, everything up to the next older one goes (one index seek; nothing when there are
# fewer - the subquery is NULL).  One statement per record instead of an INSERT and a
# DELETE in a savepoint of their own (four statements; ~1 % of a first pass's CPU).
_TESTS_TRIM_TRIGGER = f"""
    CREATE TEMP TRIGGER IF NOT EXISTS smtpctl_tests_trim AFTER INSERT ON main.tests BEGIN
        DELETE FROM tests WHERE kind=NEW.kind AND namespace=NEW.namespace AND name=NEW.name
            AND id <= (SELECT id FROM tests WHERE kind=NEW.kind AND namespace=NEW.namespace
                       AND name=NEW.name ORDER BY id DESC LIMIT 1 OFFSET {HISTORY_KEEP});
    END
"""  # noqa: S608 - built from a constant

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


_TABLES = {"resources", "tests", "events", "input_cache"}
_P = ParamSpec("_P")
_R = TypeVar("_R")


class LockTimeout(StoreError):
    """Another apply holds the store's lock."""


class StoreUntrusted(StoreError):
    """The state directory or a file in it could be changed by someone else."""


def _damaged(path: Path, exc: BaseException) -> StoreError:
    what = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in what or "busy" in what):
        return StoreError(f"the store {path} is busy ({what}); retry when the other "
                          "smtpctl has finished")
    return StoreError(f"the store {path} cannot be used ({what}): it is damaged; move "
                      f"{path.parent} away to start over (every resource is then applied "
                      "and tested again)")


def _guarded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """SQLite errors of a store method as a StoreError naming the damage (never a
    traceback, never an empty result)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            store = args[0]
            raise _damaged(getattr(store, "path", Path("state.db")), exc) from None

    return wrapper


def check_trust(path: Path, *, secret: bool = False, directory: bool = False) -> None:
    """Refuse ``path`` when someone other than us (or root) owns it or may write it (or,
    for a ``secret``, read it), as ssh refuses a private key or config others can touch."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise StoreUntrusted(f"{path} is a symbolic link; the state directory's files must "
                             "be plain files (someone could point them elsewhere)")
    if st.st_uid not in (me, 0):
        raise StoreUntrusted(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {me}) or root: whoever owns "
            f"it can change where your credentials go; run chown {me} {path} or use another "
            "--state directory")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreUntrusted(
            f"{path} is writable by {'group' if st.st_mode & stat.S_IWGRP else 'others'} "
            f"(mode {mode:04o}): they could change where your credentials go; run "
            f"chmod go-w {path}")
    if secret and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise StoreUntrusted(
            f"{path} is readable by others (mode {mode:04o}); run chmod 600 {path}")
    if directory:
        parent = path.resolve().parent
        try:
            pst = os.stat(parent)
        except OSError:
            return
        if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
            raise StoreUntrusted(
                f"the directory {parent} that holds {path.name} is writable by others "
                f"without the sticky bit (mode {stat.S_IMODE(pst.st_mode):04o}): they could "
                f"replace the state directory; run chmod go-w {parent} or use another --state")


@dataclass(frozen=True, slots=True)
class Upserted:
    obj: StoredObject
    change: str  # created | configured (spec changed) | unchanged | metadata


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _key(ref: ObjectRef) -> tuple[str, str, str]:
    return (ref.kind, ref.namespace, ref.name)


def _loads(text: str) -> Any:
    """``json.loads``, faster: orjson (the cli extra's) reads the rows; what it refuses (NaN
    or Infinity, which ``json`` writes; a lone surrogate), or no orjson at all, goes to
    ``json``.  One difference remains: orjson reads an integer beyond 64 bits as a float.
    The rows hold none: a manifest's integers are bounded by its schema (ports, priority,
    timeouts), generation counters are the store's own, and the input's ``status`` and
    ``metadata.generation`` are dropped before anything is stored."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except ValueError:
            pass
    return json.loads(text)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_ORJSON_OPTIONS = 0 if _orjson is None else (
    _orjson.OPT_SORT_KEYS | _orjson.OPT_PASSTHROUGH_DATACLASS | _orjson.OPT_PASSTHROUGH_DATETIME)


def _dumps(data: Any) -> str:
    """A row's JSON: keys sorted, compact, UTF-8 as is (``json`` with those options).

    orjson writes it (~10x faster: the status, memo and test record of every pass were
    a tenth of a large apply's CPU).  What orjson refuses goes to ``json`` as before, so
    nothing is accepted that was refused and nothing is refused that was accepted: a
    non-string key, an integer beyond 64 bits, a lone surrogate, and (passed through on
    purpose) dataclasses and datetimes, which ``json`` refuses too.  The text may differ
    from ``json``'s in how a float is spelt (``1e-6`` for ``1e-06``), never in what it
    reads back as.  orjson writes NaN and Infinity as ``null``: a text with a ``null`` is
    checked for them (rare: a status has none) and written by ``json`` if it has one, which
    :func:`_loads` reads back as they were."""
    if _orjson is not None:
        try:
            out = _orjson.dumps(data, option=_ORJSON_OPTIONS)
        except TypeError:
            pass
        else:
            if b"null" not in out or _finite(data):
                return out.decode()
    return _ENCODER.encode(data)  # one encoder: json.dumps with options builds one per call


def _finite(data: Any) -> bool:
    """No NaN or infinite float anywhere in ``data`` (which orjson has just encoded)."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return False
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return True


def _spec_of(manifest: dict[str, Any]) -> str:
    return _dumps(manifest.get("spec") or {})


@functools.cache
def _manifest_annotation() -> str:
    """credentials.policy's annotation, imported when first needed: that module loads the
    resource models (pydantic), which ``apply`` need not wait for before it has opened
    the store and started its probe workers (reconciler/cli/cmd_apply.py)."""
    from reconciler.credentials.policy import MANIFEST_ANNOTATION

    return MANIFEST_ANNOTATION


def _without_origin(manifest: dict[str, Any]) -> str:
    """The manifest without the loader's record of its file (see credentials.policy)."""
    meta = dict(manifest.get("metadata") or {})
    origin = _manifest_annotation()
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != origin}
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
    check_trust(path, secret=True)
    key = path.read_bytes()
    if len(key) < 32:
        raise StoreError(f"{path} is damaged (too short); delete it to start over "
                         "(every resource will be re-tested once)")
    return key


@dataclass(slots=True)
class _Batch:
    """The open group commit of :meth:`LocalStore.batched`."""

    max_delay: float
    max_units: int
    loop: asyncio.AbstractEventLoop | None = None
    opened: float = 0.0
    units: int = 0
    timer: asyncio.TimerHandle | None = None
    failed: StoreError | None = None
    ended: bool = False  # the store was closed
    # Resources whose events a unit of this batch trimmed: durable at the next COMMIT;
    # if that fails (or SQLite rolls the batch back), they are to be trimmed again.
    trimmed: set[tuple[str, str, str]] = field(default_factory=set)
    # The next unit writes with one statement (``_tx(one_statement=True)``): no savepoint.
    one_statement: bool = False


class _OwnTx:
    """A unit of writes outside a group commit: its own transaction."""

    __slots__ = ("store",)

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        return self.store._begin()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        db = self.store._db
        if exc_type is not None:
            db.execute("ROLLBACK")
            return
        db.execute("COMMIT")
        self.store.write_transactions += 1


class _Unit:
    """A unit of writes inside the open group commit: a savepoint of its transaction (none
    for a one-statement unit, see ``LocalStore._tx``); commits the batch when it is full or
    old enough, between two units only."""

    __slots__ = ("bare", "batch", "store")

    def __init__(self, store: LocalStore, batch: _Batch) -> None:
        self.store = store
        self.batch = batch
        self.bare = False

    def __enter__(self) -> sqlite3.Connection:
        batch = self.batch
        if batch.failed is not None:
            # A commit failed: the units since the one before it are lost.  No later unit
            # may commit (a status without the test record it follows), until the block ends.
            raise batch.failed
        store = self.store
        db = store._db
        self.bare = batch.one_statement
        batch.one_statement = False
        if not db.in_transaction:
            store._begin()
            batch.opened = time.monotonic()
            batch.units = 0
            if batch.loop is not None:
                batch.timer = batch.loop.call_later(
                    batch.max_delay, store._commit_open, batch, True)
        if not self.bare:
            db.execute("SAVEPOINT unit")
        return db

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        store, batch = self.store, self.batch
        db = store._db
        if exc is not None:
            if not db.in_transaction:
                # SQLite rolled the whole transaction back on its own (a full disk, an I/O
                # error): the units before this one are lost too, so no later unit may
                # commit after them (not a prefix any more), as after a failed COMMIT.
                batch.failed = _damaged(store.path, exc)
                store._epoch = object()  # the journal names writes that were rolled back
                store._trims_lost(batch)
                return
            if not self.bare:
                db.execute("ROLLBACK TO unit")
                db.execute("RELEASE unit")
            return
        if not self.bare:
            db.execute("RELEASE unit")
        batch.units += 1
        if batch.units >= batch.max_units or time.monotonic() - batch.opened >= batch.max_delay:
            store._commit_open(batch)


def _where(kind: str | None, namespace: str | None) -> tuple[str, list[Any]]:
    """The WHERE of the resources of ``kind`` in ``namespace`` (None: any), and its
    arguments."""
    where, args = " WHERE 1=1", []
    if kind is not None:
        where += " AND kind=?"
        args.append(kind)
    if namespace is not None:
        where += " AND namespace=?"
        args.append(namespace)
    return where, args


def _filter(kind: str | None, namespace: str | None) -> tuple[str, list[Any]]:
    """The WHERE and ORDER BY of a listing by kind and namespace (None: any), and its
    arguments."""
    where, args = _where(kind, namespace)
    return where + " ORDER BY namespace, name, kind", args


class LocalStore:
    """The SQLite store; implements :class:`reconciler.stores.base.Store`.

    One connection, used from one thread (the event loop's).  Transactions are short and
    synchronous: ``BEGIN IMMEDIATE`` takes the write lock up front so a read-modify-write
    never fails half-way with SQLITE_BUSY.
    """

    def __init__(self, state: str | os.PathLike[str], *, install_key: bool = True,
                 create: bool = True) -> None:
        self.state = Path(state)
        self.path = self.state / DB_NAME
        # Write transactions committed (tests and bench/fleet.py read it) and the open
        # group commit, if any (see batched()).
        self.write_transactions = 0
        self._batch: _Batch | None = None
        # The objects as this process last wrote them, while remember() is open.
        # Keyed by (kind, namespace, name), a row's key: list_current_sync looks every
        # row up (a tuple hashes in C; an ObjectRef's dataclass hash is Python code).
        self._known: dict[tuple[str, str, str], StoredObject] | None = None
        # Keys written inside remember(), in order (changes_since), and its epoch: a new
        # object when the journal starts over.
        self._journal: list[tuple[str, str, str]] = []
        self._epoch = object()
        self._data_version: object = None
        # A new object at each BEGIN IMMEDIATE of this connection (the transaction's
        # token), and the token of the transaction in which _all_known_current last found
        # every remembered object current: while that transaction is open, this connection
        # holds SQLite's write lock, so no other connection can have committed since.
        self._tx_token: object = object()
        self._verified_tx: object = None
        self._remember_epoch: object | None = None  # the epoch remember() began with
        self._built: set[tuple[str, str, str]] = set()  # statuses built here, not read
        # Resources this store recorded events for since its last trim (record_event_sync).
        self._events_touched: set[tuple[str, str, str]] = set()
        self._events_since_trim = 0
        self.batch_max_delay = 0.05
        self.batch_max_units = 1000
        if not self.state.exists():
            if not create:
                raise StoreError(f"no state directory at {self.state} (run `smtpctl apply` "
                                 "first, or pass --state)")
            self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.state.is_dir():
            raise StoreError(f"{self.state} is not a directory (--state names a directory)")
        check_trust(self.state, directory=True)
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", LOCK_NAME, KEY_NAME):
            check_trust(self.state / name, secret=name == KEY_NAME)
        key = load_version_key(self.state)
        if install_key:
            set_version_key(key)
        # The parse cache's MAC key: only someone holding version.key can write an entry.
        self._cache_key = hmac.new(key, b"smtpctl input cache", hashlib.sha256).digest()
        try:
            if not self.path.exists():
                self._create_db()
            elif self.path.stat().st_size == 0:
                raise StoreError(
                    f"the store {self.path} is empty (0 bytes): it is damaged (a store is "
                    f"never empty once created); move {self.state} away to start over "
                    "(every resource is then applied and tested again)")
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self._check_tables()
            self._db.execute(_TESTS_TRIM_TRIGGER)
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from None
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            with contextlib.suppress(OSError):
                os.chmod(self.state / name, 0o600)  # stores created by older releases
        self._lock_fd: int | None = None

    def _create_db(self) -> None:
        """A complete, 0600 database under a temporary name, then linked into place: a
        ``state.db`` is never seen half-created, and its WAL/SHM files get its mode."""
        tmp = self.state / f".{DB_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._db = db
                self._migrate()
            finally:
                db.close()
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _check_tables(self) -> None:
        names = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        missing = _TABLES - names
        if missing:
            raise StoreError(
                f"the store {self.path} is damaged (missing tables: {', '.join(sorted(missing))}"
                f"); move {self.state} away to start over (every resource is then applied "
                "and tested again)")

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
        try:
            self.flush()
        finally:
            if self._batch is not None:
                self._batch.ended = True  # closed inside batched(): nothing more to commit
            self.unlock()
            self._db.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, *, one_statement: bool = False
            ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One unit of writes: its own transaction, or a savepoint of the group commit.

        ``one_statement``: the block writes with at most one statement (reads aside), so
        inside a group commit it needs no savepoint of its own: SQLite undoes a failed
        statement by itself (the transaction stays open, the other units keep theirs), and
        a block that raises before its statement has written nothing.  Two statements
        saved per status write and per event (most of a first apply's units).

        Plain context managers (:class:`_OwnTx`, :class:`_Unit`), not generator-based ones:
        every write of every pass enters one (two nested generators cost ~6 % of a first
        pass's engine CPU)."""
        if self._batch is not None:
            self._batch.one_statement = one_statement
            return self._unit(self._batch)
        return _OwnTx(self)

    def _begin(self) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE``: this connection takes SQLite's write lock (one writer at a
        time; in WAL mode the transaction also reads the latest commit) and holds it until
        its COMMIT or ROLLBACK.  Every transaction this store writes in starts here."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        self._tx_token = object()
        return db

    # --- group commit -----------------------------------------------------------------

    @contextlib.contextmanager
    def batched(self, max_delay: float | None = None, max_units: int | None = None
                ) -> Iterator[None]:
        """Group the write units of the block into few transactions (group commit).

        Each unit (one ``_tx`` block: a status write, a test record, an event) becomes a
        savepoint of a transaction that stays open for at most ``max_delay`` seconds or
        ``max_units`` units (default: the store's ``batch_max_delay``, 50 ms, and
        ``batch_max_units``, 1,000), then commits.  This connection reads its own uncommitted
        writes, so the engine sees what it wrote; other processes (``get``, ``describe``)
        see it at the next commit, ``max_delay`` later at most.

        Crash safety is unchanged: a commit happens only between two units, never inside
        one (a unit is synchronous), so every committed state is one that committing each
        unit on its own could also have left - a prefix of the units in their order.  A
        process killed meanwhile loses the units since the last commit, as it would lose
        the ones it had not reached.  The block's end (also by an exception), ``flush``,
        ``unlock`` and ``close`` commit what is open.
        """
        if self._batch is not None:  # nested: the outer block commits
            yield
            return
        import asyncio  # here: get/describe open stores and need no event loop

        batch = _Batch(self.batch_max_delay if max_delay is None else max_delay,
                       self.batch_max_units if max_units is None else max_units)
        try:
            batch.loop = asyncio.get_running_loop()
        except RuntimeError:
            batch.loop = None  # synchronous use: committed by size, age and the block's end
        self._batch = batch
        try:
            yield
        finally:
            self._batch = None
            self._commit_open(batch, quiet=True)
        if batch.failed is not None:
            raise batch.failed

    def flush(self) -> None:
        """Commit the open group commit, if any (the block goes on batching); raises the
        StoreError of a failed commit."""
        if self._batch is not None:
            self._commit_open(self._batch)

    def _unit(self, batch: _Batch) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One unit of the open group commit (see :class:`_Unit`)."""
        return _Unit(self, batch)

    def _commit_open(self, batch: _Batch, quiet: bool = False) -> None:
        """Commit what ``batch`` has open.  A failed commit is kept on the batch (every
        later unit raises it) and raised unless ``quiet`` (the timer, the block's end)."""
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.failed is not None or batch.ended or not self._db.in_transaction:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            batch.failed = _damaged(self.path, exc)
            self._epoch = object()  # the journal names writes that were rolled back
            self._trims_lost(batch)
            with contextlib.suppress(sqlite3.DatabaseError):
                self._db.execute("ROLLBACK")
            if not quiet:
                raise batch.failed from None
            return
        batch.trimmed.clear()
        self.write_transactions += 1

    def _trims_lost(self, batch: _Batch) -> None:
        """The batch's event trims were rolled back: their resources are trimmed again at
        the next trim."""
        self._events_touched |= batch.trimmed
        batch.trimmed.clear()

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
        try:
            self.flush()  # nothing written under the lock stays uncommitted after it
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @_guarded
    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- rows -----------------------------------------------------------------------

    _COLS = "kind, namespace, name, uid, generation, created_at, manifest, status, memo, version"

    @staticmethod
    def _row(row: tuple[Any, ...]) -> StoredObject:
        kind, ns, name, uid, gen, created, manifest, status, memo, version = row
        return StoredObject(
            ref=ObjectRef(kind, ns, name), manifest=_loads(manifest), generation=int(gen),
            created_at=created, status=_loads(status),
            memo=TestMemo.from_json(_loads(memo)) if memo else None,
            version=str(version), uid=uid)

    @_guarded
    def get_sync(self, ref: ObjectRef) -> StoredObject | None:
        row = self._db.execute(
            f"SELECT {self._COLS} FROM resources WHERE kind=? AND namespace=? AND name=?",  # noqa: S608
            (ref.kind, ref.namespace, ref.name)).fetchone()
        return self._row(row) if row else None

    @_guarded
    def list_sync(self, kind: str | None = None, namespace: str | None = None
                  ) -> list[StoredObject]:
        where, args = _filter(kind, namespace)
        return [self._row(r) for r in self._db.execute(
            f"SELECT {self._COLS} FROM resources" + where, args)]  # noqa: S608

    @contextlib.contextmanager
    def remember(self) -> Iterator[None]:
        """While the block runs, keep every object as this store last wrote it (upserts,
        status writes; deletes forget) or listed it, so that :meth:`list_current_sync`
        hands those back instead of decoding their rows again.  An apply opens it around
        its passes: its final selection pass and its report needed two full decodes of
        every row (CPU, and ~70 MB each at 10,000 resources)."""
        if self._known is not None:
            yield
            return
        self._known = {}
        self._journal = []
        self._epoch = self._remember_epoch = object()
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        try:
            yield
        finally:
            self._remember_epoch = None
            self._known = None
            self._built = set()
            self._journal = []
            self._epoch = object()

    def changes_since(self, kind: str, namespace: str, token: object | None
                      ) -> tuple[object, set[str] | None]:
        """``(token, names)``: the names of ``kind`` in ``namespace`` written through this
        store (status writes, upserts, deletes) since ``token``, which an earlier call
        returned; ``names`` is None when the store cannot tell - outside :meth:`remember`,
        no or an old token, or another connection (process) committed since - and the
        caller lists instead.  Selection keeps its view of a namespace with it instead of
        listing the namespace on every run (engine/selection.py)."""
        if self._known is None:
            return None, None
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection committed: start over
            self._data_version = version
            self._epoch = object()
        now = (self._epoch, len(self._journal))
        if not isinstance(token, tuple) or len(token) != 2 or token[0] is not self._epoch:
            return now, None
        return now, {n for k, ns, n in self._journal[token[1]:]
                     if k == kind and ns == namespace}

    @property
    def shares_objects(self) -> bool:
        """True inside :meth:`remember`: an unchanged object is handed out again as the
        same Python object (``is``), so a reader may memoise what it derives from it by
        identity (selection does: engine/selection.py).  Objects are read-only."""
        return self._known is not None

    def _remember(self, obj: StoredObject, *, built: bool, read: bool = False) -> None:
        known = self._known
        if known is None:
            return
        key = _key(obj.ref)
        if not read:  # written through this store: a change (changes_since)
            self._journal.append(key)
        if built:
            self._built.add(key)
        else:
            self._built.discard(key)
        prev = known.get(key)
        if prev is not None and prev.manifest is not obj.manifest \
                and prev.generation == obj.generation and prev.manifest == obj.manifest:
            # the same manifest decoded again (each status write reads its row): keep one
            obj = dataclasses.replace(obj, manifest=prev.manifest)
        known[key] = obj

    @_guarded
    def list_current_sync(self, kind: str | None = None, namespace: str | None = None,
                          *, as_read: bool = False) -> list[StoredObject]:
        """:meth:`list_sync`, but a row whose version is the one this store last wrote
        (see :meth:`remember`) is not decoded again: that object is returned.  Its dicts
        are shared: read them, never change them (as a status mutator's ``cur``).  The
        keys of a remembered status are in the order they were built, not the stored
        (sorted) order: ``as_read`` re-encodes and decodes those statuses (as written to
        the row, as a read decodes it), for a caller that prints whole dicts."""
        known = self._known
        if known is None:
            return self.list_sync(kind, namespace)
        built = self._built if as_read else None
        every = self._all_known_in(kind, namespace)
        if every is not None:  # no row to read: each is remembered as it is stored
            if built is None:
                return every
            return [dataclasses.replace(o, status=_loads(_dumps(o.status)))
                    if _key(o.ref) in built else o for o in every]
        where, args = _filter(kind, namespace)
        rows = self._db.execute("SELECT kind, namespace, name, version FROM resources"  # noqa: S608
                                + where, args).fetchall()
        out: list[StoredObject | None] = []
        stale: dict[tuple[str, str, str], int] = {}  # row key -> its place in out
        for k, ns, name, version in rows:
            key = (k, ns, name)
            obj = known.get(key)
            if obj is None or obj.version != str(version):
                stale[key] = len(out)  # not ours, or changed since: read below
                out.append(None)
            elif built is not None and key in built:
                out.append(dataclasses.replace(obj, status=_loads(_dumps(obj.status))))
            else:
                out.append(obj)
        if stale:  # one more scan, decoding only those rows (and remembering them)
            for row in self._db.execute(f"SELECT {self._COLS} FROM resources"  # noqa: S608
                                        + where, args):
                at = stale.get((row[0], row[1], row[2]))
                if at is not None and out[at] is None:
                    obj = self._row(row)
                    self._remember(obj, built=False, read=True)
                    out[at] = obj
        return [o for o in out if o is not None]

    @_guarded
    def current_in(self, kind: str, namespace: str, names: Iterable[str]
                   ) -> dict[str, StoredObject | None]:
        """``{name: get(ref)}`` for ``names`` of ``kind`` in ``namespace`` (None: no such
        object), read in one scan of the namespace (:meth:`list_current_sync`) instead of
        one query per name: selection reads every relay a first apply wrote this way.

        Inside :meth:`remember`, while every remembered object is known to be as its row
        holds it (:meth:`_all_known_current`), those are handed back without reading a row
        (the final selection of a first apply asked for every relay the apply just wrote:
        a scan of the namespace, ~3 % of the pass); a name not remembered is read."""
        if self._all_known_current():
            known = self._known
            assert known is not None
            out: dict[str, StoredObject | None] = {}
            for name in names:
                obj = known.get((kind, namespace, name))
                if obj is None:
                    obj = self.get_sync(ObjectRef(kind, namespace, name))
                    if obj is not None:
                        self._remember(obj, built=False, read=True)
                out[name] = obj
            return out
        found = {o.ref.name: o for o in self.list_current_sync(kind, namespace)}
        return {name: found.get(name) for name in names}

    def _all_known_in(self, kind: str | None, namespace: str | None
                      ) -> list[StoredObject] | None:
        """Every object of ``kind`` in ``namespace`` (None: any) in listing order, when
        each is remembered and current (:meth:`_all_known_current`), else None: the rows
        are counted (an index range, no row read) and compared with the remembered ones,
        which are all stored rows (a delete forgets its object), so equal counts mean the
        same objects."""
        if not self._all_known_current():
            return None
        assert self._known is not None
        where, args = _where(kind, namespace)
        objs = [o for (k, ns, _), o in self._known.items()
                if (kind is None or k == kind) and (namespace is None or ns == namespace)]
        (rows,) = self._db.execute("SELECT COUNT(*) FROM resources" + where,  # noqa: S608
                                   args).fetchone()
        if rows != len(objs):
            return None
        # ORDER BY namespace, name, kind (_filter): SQLite compares the UTF-8 bytes, in
        # code point order, as Python compares strings.
        objs.sort(key=lambda o: (o.ref.namespace, o.ref.name, o.ref.kind))
        return objs

    def _all_known_current(self) -> bool:
        """Inside :meth:`remember`: is every remembered object as its row holds it now?

        True while no other connection has committed (``PRAGMA data_version``, one
        statement) and no write of this one was rolled back after it was remembered (the
        epoch is still the one ``remember()`` began with; a failed commit or a transaction
        SQLite rolled back starts a new one).  Every write of this connection remembers
        what it wrote (``_remember``) or forgets the object (a delete), and a unit that
        fails leaves its rows as they were - as remembered.  A remembered object absent
        from the store is never handed out: a delete forgets it."""
        if self._known is None or self._epoch is not self._remember_epoch:
            return False
        db = self._db
        in_tx = db.in_transaction
        if in_tx and self._verified_tx is self._tx_token:
            # Checked inside this transaction, which holds the write lock (_begin): no
            # other connection can have committed since; no statement.
            return True
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection committed: start over
            self._data_version = version
            self._epoch = object()
            return False
        if in_tx:
            self._verified_tx = self._tx_token
        return True

    @_guarded
    def upsert_many(self, manifests: list[dict[str, Any]], *, now: float | None = None
                    ) -> list[Upserted]:
        """Insert or update manifests in one transaction (the generation rule of Kubernetes:
        it increments only when ``spec`` changes).  Returns the objects as stored."""
        now = time.time() if now is None else now
        created_now = _rfc3339(now)
        out: list[Upserted] = []
        with self._tx() as db:
            # The rows already there, read in a few queries (one per UPSERT_READ_CHUNK
            # names of a kind and namespace) instead of one per manifest; a row this loop
            # writes replaces its entry, so a manifest given twice sees the first one's
            # write, as a query per manifest would.
            refs = [manifest_ref(m) for m in manifests]
            rows = self._rows_of(db, refs)
            for m, ref in zip(manifests, refs, strict=True):
                meta = m.get("metadata") or {}
                clean: dict[str, Any] = {k: m[k] for k in ("apiVersion", "kind", "metadata",
                                                           "spec") if k in m}
                clean["metadata"] = {k: v for k, v in meta.items()
                                     if k not in ("generation", "uid", "resourceVersion",
                                                  "creationTimestamp")}
                clean["metadata"].setdefault("namespace", ref.namespace)
                key = (ref.kind, ref.namespace, ref.name)
                row = rows.get(key)
                text = _dumps(clean)
                if row is None:
                    uid, created = str(uuid.uuid4()), created_now
                    db.execute(
                        "INSERT INTO resources (kind, namespace, name, uid, generation, "
                        "created_at, manifest) VALUES (?,?,?,?,?,?,?)",
                        (ref.kind, ref.namespace, ref.name, uid, 1, created, text))
                    rows[key] = (*key, uid, 1, created, text, "{}", None, 1)
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
                rows[key] = (*key, uid, gen, created, text, status, memo, version)
                obj = StoredObject(
                    ref, clean, gen, created, _loads(status),
                    TestMemo.from_json(_loads(memo)) if memo else None, str(version), uid)
                out.append(Upserted(obj, change))
        for u in out:
            self._remember(u.obj, built=False)
        return out

    def _rows_of(self, db: sqlite3.Connection, refs: list[ObjectRef]
                 ) -> dict[tuple[str, str, str], tuple[Any, ...]]:
        """The rows of ``refs`` that exist, by key: one query per
        :data:`UPSERT_READ_CHUNK` names of a kind and namespace (a name list, not a scan of
        the namespace: a small input in a large store reads only its own rows)."""
        names: dict[tuple[str, str], list[str]] = {}
        for ref in refs:
            names.setdefault((ref.kind, ref.namespace), []).append(ref.name)
        rows: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        for (kind, ns), group in names.items():
            for i in range(0, len(group), UPSERT_READ_CHUNK):
                chunk = group[i:i + UPSERT_READ_CHUNK]
                for row in db.execute(
                        f"SELECT {self._COLS} FROM resources WHERE kind=? AND namespace=? "  # noqa: S608
                        f"AND name IN ({','.join('?' * len(chunk))})", (kind, ns, *chunk)):
                    rows[(row[0], row[1], row[2])] = row
        return rows

    def _mac(self, digest: str, text: str) -> str:
        return hmac.new(self._cache_key, digest.encode() + b"\0" + text.encode(),
                        hashlib.sha256).hexdigest()

    @_guarded
    def cached_input(self, digest: str) -> list[dict[str, Any]] | None:
        """The validated manifests of an input set applied before (see runtimes.local).

        Only an entry carrying a valid MAC (keyed by ``version.key``) is used: a cache is
        never a way to change where credentials go.
        """
        row = self._db.execute("SELECT manifests FROM input_cache WHERE digest=?",
                               (digest,)).fetchone()
        if row is None:
            return None
        try:
            envelope = json.loads(row[0])
            text, mac = envelope["data"], envelope["mac"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(text, str) or not isinstance(mac, str) \
                or not hmac.compare_digest(mac, self._mac(digest, text)):
            return None
        data = json.loads(text)
        return data if isinstance(data, list) else None

    @_guarded
    def cache_input(self, digest: str, manifests: list[dict[str, Any]]) -> None:
        text = _dumps(manifests)
        envelope = _dumps({"data": text, "mac": self._mac(digest, text)})
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO input_cache (digest, manifests, at) "
                       "VALUES (?,?,?)", (digest, envelope, time.time()))
            db.execute("DELETE FROM input_cache WHERE digest NOT IN (SELECT digest FROM "
                       "input_cache ORDER BY at DESC LIMIT ?)", (INPUT_CACHE_KEEP,))

    @_guarded
    def delete_sync(self, ref: ObjectRef) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                             (ref.kind, ref.namespace, ref.name))
            db.execute("DELETE FROM tests WHERE kind=? AND namespace=? AND name=?",
                       (ref.kind, ref.namespace, ref.name))
            gone = cur.rowcount > 0
        if self._known is not None:
            self._known.pop(_key(ref), None)
            self._built.discard(_key(ref))
            self._journal.append(_key(ref))
        return gone

    def _current(self, ref: ObjectRef) -> StoredObject | None:
        """:meth:`get_sync`, but inside :meth:`remember` an object whose row still has the
        version this store last wrote or read is handed back as it is (one indexed read of
        the version instead of decoding the row; inside a write transaction not even that
        once :meth:`_all_known_current` has checked it, tests/test_store_reads_in_write_tx.py).
        Shared: read it, never change it (the engine's mutators copy what they change;
        tests/test_store_remember.py checks)."""
        known = self._known
        obj = known.get(_key(ref)) if known is not None else None
        if obj is None:
            return self.get_sync(ref)
        if self._db.in_transaction and self._all_known_current():
            # Inside a write transaction (a group commit's, nearly every pass of an
            # apply): checked once per transaction, then no statement per object.
            return obj
        row = self._db.execute(
            "SELECT version FROM resources WHERE kind=? AND namespace=? AND name=?",
            (ref.kind, ref.namespace, ref.name)).fetchone()
        if row is None:
            return None
        return obj if str(row[0]) == obj.version else self.get_sync(ref)

    def _put_status(self, ref: ObjectRef, write: StatusWrite, version: int | None = None,
                    ) -> bool:
        """Write ``write`` to ``ref``'s row (only while the row has ``version``, if given):
        one UPDATE; False when no row was written."""
        sql = ("UPDATE resources SET status=?, memo=?, version=version+1 "
               "WHERE kind=? AND namespace=? AND name=?")
        args: list[Any] = [_dumps(write.status),
                           _dumps(write.memo.to_json()) if write.memo else None,
                           ref.kind, ref.namespace, ref.name]
        if version is not None:
            sql += " AND version=?"
            args.append(version)
        return bool(self._db.execute(sql, args).rowcount == 1)

    @_guarded
    def update_status_sync(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        with self._tx(one_statement=True):  # reads, then one UPDATE that writes
            # Inside remember(): the object as this store last wrote or read it is mutated
            # and written only if the row still has its version (one statement instead of
            # a SELECT of the version, then the UPDATE); a row changed since (or gone) is
            # read and mutated again, as outside remember() (mutators are pure).
            known = self._known.get(_key(ref)) if self._known is not None else None
            write = mutate(known) if known is not None else None
            if write is not None and known is not None \
                    and self._put_status(ref, write, int(known.version)):
                cur: StoredObject = known
            else:
                now = self._current(ref)
                if now is None:
                    return None
                if now is not known:
                    write = mutate(now)
                if write is None:
                    return now
                cur = now
                self._put_status(ref, write)
        obj = StoredObject(ref=cur.ref, manifest=cur.manifest, generation=cur.generation,
                           created_at=cur.created_at, status=write.status, memo=write.memo,
                           version=str(int(cur.version) + 1), uid=cur.uid)
        self._remember(obj, built=True)
        return obj

    @_guarded
    def tests_sync(self, ref: ObjectRef, limit: int = HISTORY_KEEP) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT record FROM tests WHERE kind=? AND namespace=? AND name=? "
            "ORDER BY id DESC LIMIT ?", (ref.kind, ref.namespace, ref.name, limit)).fetchall()
        return [_loads(r[0]) for r in rows]

    @_guarded
    def events_sync(self, ref: ObjectRef, limit: int = 20) -> list[Event]:
        rows = self._db.execute(
            "SELECT at, type, reason, message FROM events WHERE kind=? AND namespace=? "
            "AND name=? ORDER BY id DESC LIMIT ?",
            (ref.kind, ref.namespace, ref.name, limit)).fetchall()
        return [Event(ref, t, reason, msg, at) for at, t, reason, msg in rows[::-1]]

    # --- the Store protocol ---------------------------------------------------------

    @_guarded
    def _get_current(self, ref: ObjectRef) -> StoredObject | None:
        return self._current(ref)

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        return self._get_current(ref)  # = get_sync outside remember()

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        return self.list_current_sync(kind, namespace)

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        return self.update_status_sync(ref, mutate)

    async def record_test(self, record: TestRecord) -> None:
        self.record_test_sync(record)

    @_guarded
    def record_test_sync(self, record: TestRecord) -> None:
        r = record.ref
        text = _dumps(record.to_json())  # before the unit: a failure here writes nothing
        # One statement (the history trim is the INSERT's trigger, _TESTS_TRIM_TRIGGER):
        # inside a group commit no savepoint of its own - SQLite undoes a failed statement,
        # trigger included, by itself.
        with self._tx(one_statement=True) as db:
            db.execute(
                "INSERT INTO tests (kind, namespace, name, generation, at, passed, reason, "
                "record) VALUES (?,?,?,?,?,?,?,?)",
                (r.kind, r.namespace, r.name, record.generation, record.at,
                 int(record.passed), record.reason, text))

    async def record_event(self, event: Event) -> None:
        self.record_event_sync(event)

    @_guarded
    def record_event_sync(self, event: Event) -> None:
        r = event.ref
        key = (r.kind, r.namespace, r.name)
        # Trimmed now and then, not on every insert: every EVENTS_TRIM_EVERY events, the
        # resources they name keep their EVENTS_KEEP newest (one index range each).  Not the
        # whole table (a window over every event: O(events) per trim, which made a first
        # apply of 10,000 quadratic); a resource this process names no more keeps at most
        # EVENTS_TRIM_EVERY - 1 beyond EVENTS_KEEP until one does.
        trim = self._events_since_trim + 1 >= EVENTS_TRIM_EVERY
        touched = self._events_touched | {key} if trim else set()  # what this unit trims
        with self._tx(one_statement=not trim) as db:  # one INSERT, unless it trims
            db.execute(
                "INSERT INTO events (kind, namespace, name, at, type, reason, message) "
                "VALUES (?,?,?,?,?,?,?)",
                (r.kind, r.namespace, r.name, event.at, event.type, event.reason,
                 event.message))
            if trim:
                db.executemany(
                    "DELETE FROM events WHERE kind=?1 AND namespace=?2 AND name=?3 AND id < "
                    "(SELECT id FROM events WHERE kind=?1 AND namespace=?2 AND name=?3 "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?4)",
                    [(*k, EVENTS_KEEP - 1) for k in sorted(touched)])
        # Only once the unit is written: a unit that rolled back (its trim with it) leaves
        # its resources to the next trim (tests/test_store_events_trim.py).
        if not trim:
            self._events_touched.add(key)
            self._events_since_trim += 1
            return
        self._events_touched = set()
        self._events_since_trim = 0
        if self._batch is not None and self._db.in_transaction:
            self._batch.trimmed |= touched  # durable at the batch's commit (_Batch.trimmed)


