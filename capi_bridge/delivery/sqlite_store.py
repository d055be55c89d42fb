"""The SQLite store: one file (WAL) shared by every process of the app on one host.

An event is *accepted* when its row is committed here or in its process's journal (which feeds
this file), and it stays until Meta has taken it or it is dead-lettered with Meta's reason;
nothing about delivery lives only in memory, so a crash, an OOM kill or a deploy loses nothing
and a million-event backlog costs disk, not RAM. It does
not survive the loss of the host's disk: sites on several hosts, or on disks that a deploy
throws away, use :mod:`capi_bridge.delivery.postgres_store`.

Design, in the order it matters for speed and safety:

* **No SQLite write on the request path.** ``Bridge`` appends events that are not held to its
  process's journal (:mod:`capi_bridge.delivery.journal`: one ``write()``, durable as a commit
  is), and dispatchers move them in here in batches
  (:mod:`capi_bridge.delivery.sqlite_intake`), one transaction for a pass's worth. There
  ``INSERT OR IGNORE`` on the UNIQUE (pixel, event_name, event_id) key is both the store and
  the idempotency check: a reloaded thank-you page inserts nothing. :meth:`enqueue` (held
  events, bulk imports too big for one journal record) writes here directly, one statement.
  Delivered rows keep their key (payload dropped) for Meta's 48-hour dedup window. A new row
  is *fresh* and in no index but that key: it is appended in rowid order, and the dispatcher
  sends fresh rows as they are, leased as one id range
  (:mod:`capi_bridge.delivery.sqlite_fresh`): only rows whose send fails move into the
  claimable indexes.
* **WAL + ``synchronous=NORMAL``**, set explicitly on every connection: a commit survives a crash
  of the process (the WAL is in the OS page cache), while a power loss or kernel panic may roll
  back the last commits. ``FULL`` (``outbox_synchronous``) fsyncs every commit (~150 µs here).
  ``wal_autocheckpoint=0``: checkpoints run in the dispatcher (:meth:`checkpoint`), never
  inside an ``enqueue``.
* **Leases, not locks** (:mod:`capi_bridge.delivery.sqlite_leases`): a dispatcher leases a batch
  under ``BEGIN IMMEDIATE``; an expired lease is claimable again, and leases of dead local pids
  are reclaimed at start-up.
* **Only hashed data.** Rows hold the hashed wire JSON as text (never pickle) and no token.
* **Fork safety.** One connection per thread per process; a connection inherited through
  ``fork()`` is never used nor closed in the child (closing it could disturb the parent's WAL).

Held rows wait for consent under a ``hold_key``: they take their idempotency key like any row
but are never ingested, claimed or sent until :meth:`release`. Rowids only grow: settling and
purging never delete the row with the highest id, and when dropping held rows removes it the
ingestion cursor is lowered in the same transaction, so SQLite never gives a new row an id the
cursor has passed. The schema is in :mod:`capi_bridge.delivery.sqlite_schema`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from capi_bridge.delivery import sqlite_schema
from capi_bridge.delivery.journal import MAX_BULK_RECORD, MAX_RECORD, Journal
from capi_bridge.delivery.processes import current_pid
from capi_bridge.delivery.sql_reads import SqlReads
from capi_bridge.delivery.sqlite_admin import SQLiteAdmin
from capi_bridge.delivery.sqlite_fresh import SQLiteFresh
from capi_bridge.delivery.sqlite_held import SQLiteHeld
from capi_bridge.delivery.sqlite_intake import SQLiteIntake
from capi_bridge.delivery.sqlite_leases import SQLiteLeases
from capi_bridge.delivery.sqlite_schema import (
    COUNT_DEDUP,
    SCHEMA_VERSION,
    insert_many_sql,
    insert_sql,
    rows_per_insert,
)
from capi_bridge.delivery.sqlite_writers import WriteLock
from capi_bridge.delivery.store import NewRow, State
from capi_bridge.observations import Tag

logger = logging.getLogger("capi_bridge.outbox")

_T = TypeVar("_T")
_SQLITE_BUSY = 5  # the primary result code; extended ones (BUSY_SNAPSHOT...) share the low byte
PENDING, DELIVERED, DEAD, FRESH, HELD = (int(s) for s in State)
#: How long a writer waits for another one before an enqueue fails loudly.
BUSY_TIMEOUT = 10.0


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the C type cannot), for fork bookkeeping."""


#: Connections inherited through fork(): kept referenced so the child never closes them.
_INHERITED: list[sqlite3.Connection] = []


#: Failures after which a connection is closed and opened afresh: one opened while the file
#: was read-only stays read-only, and one that met an I/O error may be in a bad state.
_REOPEN = frozenset({8, 10, 14})  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN


def _stale(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return (int(code) & 0xFF) in _REOPEN
    text = str(exc)
    return "readonly" in text or "disk I/O" in text or "unable to open" in text


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY (any extended code): another connection holds the lock; retry."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return (int(code) & 0xFF) == _SQLITE_BUSY
    return "locked" in str(exc)


class SQLiteStore(SQLiteIntake, SQLiteHeld, SQLiteAdmin, SQLiteFresh, SQLiteLeases, SqlReads):
    """The SQLite outbox at ``path``; safe to share between threads and processes."""

    #: OSError: the intake journal's (disk full, read-only directory).
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    local = True

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "NORMAL",
        create: bool = True,
        journal_bulk: bool = False,
    ) -> None:
        """``journal_bulk``: journal bulk imports too (a worker process delivers, see
        :data:`~capi_bridge.delivery.journal.MAX_RECORD`)."""
        self.path = os.path.abspath(path)
        self.location = self.path
        self.synchronous = synchronous
        self._local = threading.local()
        self._pid = os.getpid()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._writing = WriteLock(BUSY_TIMEOUT)
        self.journal = Journal(self.path + "-intake", sync=synchronous == "FULL")
        self.journal_limit = MAX_BULK_RECORD if journal_bulk else MAX_RECORD
        if create:
            self._create()
        elif not os.path.exists(self.path):
            raise FileNotFoundError(f"no outbox at {self.path}")
        else:  # a reader (the CLI) may open a file no upgraded app process has opened yet
            self._install(new=False)
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            store = ref()
            if store is not None:
                store._after_fork()

        os.register_at_fork(after_in_child=after_fork_in_child)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # --- connections --------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, never shared across fork)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != current_pid():
            if self._pid != os.getpid():
                self._after_fork()
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> _Connection:
        # No SQLite busy handler: its first back-off is a 1 ms sleep, longer than ten enqueues.
        # Lock waits are retried in Python instead (see _retry), starting at 20 µs.
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, factory=_Connection)
        for pragma in (
            f"synchronous = {self.synchronous}",
            "wal_autocheckpoint = 0",
            "journal_size_limit = 67108864",
        ):  # a pragma may read the schema: retried while another process creates the file
            self._retry(functools.partial(conn.execute, "PRAGMA " + pragma))
        with self._lock:
            self._conns.add(conn)
        return conn

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        _INHERITED.extend(self._conns)
        self._conns = weakref.WeakSet()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writing = WriteLock(BUSY_TIMEOUT)
        self.journal.forked()
        self._pid = os.getpid()

    def _discard(self, exc: sqlite3.Error) -> None:
        """Forget this thread's connection after ``exc`` if it cannot recover by itself."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and _stale(exc):
            self._local.conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Seal this process's journal and ingest it, then close this thread's connection;
        others close when their threads end. A journal that cannot be ingested now stays for
        the next dispatcher to ingest."""
        if self.journal.appended and self._pid == os.getpid():
            self.journal.close()
            try:
                self.ingest(own=True)
            except self.errors as exc:
                logger.warning(
                    "capi-bridge: journaled events wait in %s: %s", self.journal.directory, exc
                )
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            self._local.conn = None
            conn.close()

    def _create(self) -> None:
        if not os.path.exists(self.path):
            # Hashed PII lives here: readable by the app's user only (WAL/SHM files inherit it).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        # Several workers may create the file at the same moment: lock waits are retried.
        mode = self.query("PRAGMA journal_mode = WAL")[0][0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot enable WAL (got {mode})")
        self._install(new=True)

    def _install(self, *, new: bool) -> None:
        """Create the schema, or upgrade an older outbox in place (its rows are kept).

        Every step is idempotent and runs under the write lock, so workers starting together
        upgrade once. ``new=False`` leaves a file that is not an outbox (version 0) alone: a
        mistyped ``--path`` must not grow our tables. A newer version is left as it is.
        """
        version = int(self.query("PRAGMA user_version")[0][0])
        if version >= SCHEMA_VERSION or (version == 0 and not new):
            return
        with self.write() as c:
            sqlite_schema.install(c)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if version:
            logger.info(
                "capi-bridge outbox at %s upgraded from schema %d to %d",
                self.path,
                version,
                SCHEMA_VERSION,
            )
        else:
            logger.info("capi-bridge outbox ready at %s", self.path)

    @staticmethod
    def _retry(call: Callable[[], _T], wait: float | None = None) -> _T:
        """Run ``call`` until it does not meet a locked database, for up to ``wait`` seconds
        (default BUSY_TIMEOUT)."""
        delay = 20e-6
        deadline = time.monotonic() + (BUSY_TIMEOUT if wait is None else wait)
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.0005)

    def write(
        self, wait: float | None = None
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction taken up front (``BEGIN IMMEDIATE``): no upgrade deadlocks.

        Writers of this process queue on a :class:`WriteLock` first (see there), so only
        other processes' writers are met as SQLITE_BUSY and waited for by polling. This
        process's journaled rows are ingested first (see :mod:`.sqlite_intake`)."""
        self._catch_up()
        return self._write_now(wait)

    @contextlib.contextmanager
    def _write_now(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        conn = self.conn()
        try:
            with self._writing.held(wait):
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"), wait)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # a failed COMMIT (disk full...) must not stay open
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._discard(exc)
            raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a read, retried while another connection holds a lock (this process's
        journaled rows ingested first)."""
        self._catch_up()
        conn = self.conn()
        try:
            return self._retry(lambda: conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            self._discard(exc)
            raise

    # --- enqueue ------------------------------------------------------------------------------

    def enqueue(
        self,
        rows: Sequence[NewRow],
        now: float,
        *,
        hold: str | None = None,
        tags: Sequence[Tag] = (),
        origin: str = "",
        wait: float | None = None,
    ) -> int:
        """Store rows durably (committed on return); returns how many were new.

        A single row is one autocommit statement, the cheapest durable write SQLite has.
        ``tags`` (one per row, see :mod:`capi_bridge.observations`) ride in the rows, so
        observing costs no second write: ingestion files them off the request path. A
        duplicate's tag is filed at once (the second copy of a pair is what the inspector is
        there to show). With ``hold`` the rows are stored held under that key (see
        :meth:`release`); their tags are filed only if they are released.
        """
        try:
            return self._insert(rows, now, hold, tags, origin, wait)
        except sqlite3.Error as exc:
            self._discard(exc)
            raise

    def _insert(
        self,
        rows: Sequence[NewRow],
        now: float,
        hold: str | None,
        tags: Sequence[Tag],
        origin: str,
        wait: float | None,
    ) -> int:
        sql = insert_sql(held=hold is not None, observed=bool(tags))
        extra: tuple[str, ...] = () if hold is None else (hold,)
        conn = self.conn()
        if len(rows) == 1:
            pixel_id, name, event_id, test_code, expires, payload = rows[0]
            values: tuple[Any, ...] = (pixel_id, name, event_id, test_code, expires, now, now)
            values += (payload, origin)
            values += extra
            if tags:
                values += tags[0]
            self._writing.acquire(wait)  # not a `with`: this is the hot path of enqueue
            try:
                try:
                    added = conn.execute(sql, values).rowcount
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc):
                        raise
                    added = self._retry(lambda: conn.execute(sql, values), wait).rowcount
                if added == 0:
                    self._retry(lambda: conn.execute(COUNT_DEDUP, (1,)), wait)
            finally:
                self._writing.release()
        else:
            if tags and len(tags) != len(rows):
                raise ValueError(f"{len(tags)} tags for {len(rows)} rows: one tag per row")
            flat: list[Any] = []
            for index, r in enumerate(rows):
                flat += (*r[:5], now, now, r[5], origin, *extra)
                if tags:
                    flat += tags[index]
            width = len(flat) // len(rows)
            step = rows_per_insert(width)
            with self.write(wait) as c:
                added = 0
                for start in range(0, len(rows), step):
                    count = min(step, len(rows) - start)
                    added += c.execute(
                        insert_many_sql(held=hold is not None, observed=bool(tags), count=count),
                        flat[start * width : (start + count) * width],
                    ).rowcount
                if added < len(rows):
                    c.execute(COUNT_DEDUP, (len(rows) - added,))
        if added < len(rows) and tags and hold is None:
            self._observe_duplicates((*r[:3], now, t) for r, t in zip(rows, tags, strict=True))
        return added

    # --- marks -------------------------------------------------------------------------------

    def mark(self) -> int:
        return int(self.query("SELECT max(id) FROM outbox")[0][0] or 0)

    def ingested(self) -> int:
        """The ingestion cursor: no row at or below it is fresh."""
        return int(self.query("SELECT value FROM meta WHERE key = 'ingested'")[0][0])

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Processes on one host share the file, not a signal: idle dispatchers poll it."""
        return None
