"""The PostgreSQL store: one outbox shared by every process on every host of a site.

For sites that outgrow one server, or whose disks do not survive a deploy (containers without
volumes): the database they already run becomes the outbox, with the guarantees of the SQLite
store, across hosts.

* **Accepted means committed**, with the same choice as the SQLite store
  (``outbox_synchronous``): ``NORMAL`` (default) commits with ``synchronous_commit = off``, the
  counterpart of SQLite's ``synchronous=NORMAL``: a commit survives a crash of the app's
  process, while a crash of the database server or its host may lose the last fraction of a
  second of commits (never corrupting anything); ``FULL`` waits for each commit to reach the
  server's disk (and its synchronous replicas), so an accepted event survives whatever the
  database survives, at one disk flush per enqueue.
  ``enqueue`` is one statement, one round trip: ``INSERT ... ON CONFLICT DO NOTHING`` on the
  (pixel, event_name, event_id) key, which is the 48-hour idempotency check across all hosts,
  plus the event's observation and the dedup counter in the same statement; ``enqueue_many``
  is one statement for the whole call (``unnest`` of arrays).
* **Claims** take due rows with ``FOR UPDATE SKIP LOCKED`` and lease them
  (:mod:`capi_bridge.delivery.postgres_leases`): dispatchers on several hosts never send the
  same batch while leases are healthy, a dead host's leases expire and are taken over, and
  settling checks the lease owner. Hosts do not share a pid space, so leases are never
  reclaimed by pid: they expire (``lease_seconds``). Lease times come from each host's clock:
  keep the hosts' clocks in sync (NTP), as any lease needs.
* **Wake-ups**: ``enqueue_many``, ``release`` and ``retry_dead`` notify the other processes
  (``LISTEN/NOTIFY``), so an idle dispatcher elsewhere takes the rows within the linger
  instead of at its next poll. A single ``enqueue`` wakes its own process's dispatcher only:
  a NOTIFY per event would serialise every commit on the server's notification queue.
* **Connections**: a small pool per process (psycopg-pool), opened lazily, so a ``Bridge`` built
  before ``fork()`` works in every worker; a pool inherited through fork is never used nor
  closed in the child. The request path (``wait``) bounds both the wait for a connection and
  the statement (``SET LOCAL statement_timeout``), in one round trip (pipeline mode).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool, PoolTimeout

from capi_bridge.delivery import postgres_schema
from capi_bridge.delivery.postgres_admin import PostgresAdmin
from capi_bridge.delivery.postgres_leases import PostgresLeases
from capi_bridge.delivery.sql_reads import CLEAR_OBSERVED, FILE_OBSERVED_SQL, SqlReads
from capi_bridge.delivery.store import NewRow, State
from capi_bridge.observations import Tag

logger = logging.getLogger("capi_bridge.outbox")

PENDING, DELIVERED, DEAD, HELD = State.PENDING, State.DELIVERED, State.DEAD, State.HELD
#: Connections per process: enough for a threaded server's enqueues plus the dispatcher.
POOL_MAX = 8
#: How long a durable ``enqueue`` waits for a connection before the outbox is unavailable.
CONNECT_WAIT = 10.0
_HELD_CHUNK = 5000
#: Pools inherited through fork(): kept referenced so the child never closes them.
_INHERITED: list[object] = []

#: The rows of one call as arrays, one per column (a NewRow's six, then a Tag's seven).
_TYPES: tuple[str, ...] = ("text", "text", "text", "text", "float8", "text")
_TYPES += ("smallint", "smallint", "smallint", "integer", "text", "integer", "text")
_ROWS = (
    "SELECT * FROM unnest("
    + ", ".join(f"%(a{i})s::{kind}[]" for i, kind in enumerate(_TYPES))
    + ") AS r(pixel_id, event_name, event_id, test_code, expires, payload, obs_channel,"
    " obs_loaded, obs_twin, obs_keys, obs_fbp, obs_fbc_age, obs_preview)"
)
_INSERT = (
    f"WITH r AS ({_ROWS}), ins AS (INSERT INTO outbox (pixel_id, event_name, event_id,"
    " test_code, expires, created, due, payload, origin, state, hold_key, obs_channel,"
    " obs_loaded, obs_twin, obs_keys, obs_fbp, obs_fbc_age, obs_preview)"
    " SELECT pixel_id, event_name, event_id, test_code, expires, %(now)s, %(now)s, payload,"
    " %(origin)s, %(state)s, %(hold)s, {held_obs} FROM r ON CONFLICT DO NOTHING RETURNING 1),"
    " obs AS (INSERT INTO observations (at, pixel_id, event_name, event_id, channel,"
    " pixel_loaded, twin, keys, fbp_hash, fbc_age, preview) SELECT %(now)s, pixel_id,"
    " event_name, event_id, obs_channel, obs_loaded, obs_twin, obs_keys, obs_fbp, obs_fbc_age,"
    " obs_preview FROM r WHERE obs_channel IS NOT NULL AND %(hold)s::text IS NULL),"
    " dup AS (UPDATE counters SET value = value + %(n)s - (SELECT count(*) FROM ins)"
    " WHERE name = 'deduplicated' AND (SELECT count(*) FROM ins) < %(n)s)"
    " SELECT count(*) FROM ins"
)
_OBS_COLUMNS = "obs_channel, obs_loaded, obs_twin, obs_keys, obs_fbp, obs_fbc_age, obs_preview"
#: Held rows carry their observation until released; others file it at once.
_INSERT_SQL = {
    True: _INSERT.replace("{held_obs}", _OBS_COLUMNS),
    False: _INSERT.replace("{held_obs}", ", ".join(["NULL"] * 7)),
}
#: The same for one row, with plain parameters: adapting thirteen one-element arrays costs
#: more than the statement itself (~1 ms against ~0.5 ms here).
_INSERT_ONE = (
    f"WITH ins AS (INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires,"
    f" created, due, payload, origin, state, hold_key, {_OBS_COLUMNS}) VALUES (%(a0)s, %(a1)s,"
    " %(a2)s, %(a3)s, %(a4)s, %(now)s, %(now)s, %(a5)s, %(origin)s, %(state)s, %(hold)s,"
    " %(h0)s, %(h1)s, %(h2)s, %(h3)s, %(h4)s, %(h5)s, %(h6)s) ON CONFLICT DO NOTHING"
    " RETURNING 1), obs AS (INSERT INTO observations (at, pixel_id, event_name, event_id,"
    " channel, pixel_loaded, twin, keys, fbp_hash, fbc_age, preview) SELECT %(now)s, %(a0)s,"
    " %(a1)s, %(a2)s, %(o0)s, %(o1)s, %(o2)s, %(o3)s, %(o4)s, %(o5)s, %(o6)s"
    " WHERE %(o0)s::smallint IS NOT NULL), dup AS (UPDATE counters SET value = value + 1"
    " WHERE name = 'deduplicated' AND NOT EXISTS (SELECT 1 FROM ins)) SELECT count(*) FROM ins"
)


def redact(url: str) -> str:
    """The URL without its password, for messages and ``stats().path``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@functools.lru_cache(maxsize=512)
def _pg(statement: str) -> str:
    """The shared statements use ``?``; psycopg wants ``%s``."""
    return statement.replace("?", "%s")


def _count(cursor: psycopg.Cursor[Any]) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row is not None else 0


class _Tx:
    """A transaction on one connection, speaking the shared ``?`` statements."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, statement: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pg(statement), params)

    def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(statement), params)


class PostgresStore(PostgresAdmin, PostgresLeases, SqlReads):
    """The outbox in schema ``schema`` of the database at ``url``."""

    errors: tuple[type[BaseException], ...] = (psycopg.Error, PoolTimeout, LookupError)
    local = False

    def __init__(
        self,
        url: str,
        *,
        schema: str = "capi_bridge",
        synchronous: str = "NORMAL",
        create: bool = True,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
            raise ValueError(f"{schema!r} is not a schema name (letters, digits, '_')")
        self.url = url
        self.schema = schema
        self.synchronous = synchronous
        self.location = f"{redact(url)} (schema {schema})"
        self.channel = f"capi_bridge_{schema}".lower()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pid = os.getpid()
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            before = postgres_schema.install(conn, schema, create=create)
        if create and before < postgres_schema.SCHEMA_VERSION:
            logger.info("capi-bridge outbox ready in %s", self.location)

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # --- connections --------------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(pgsql.SQL("SET search_path = {}").format(pgsql.Identifier(self.schema)))
        # NORMAL: a commit is not waited for on disk, as SQLite's NORMAL (see the module doc)
        mode = "on" if self.synchronous == "FULL" else "off"
        conn.execute(f"SET synchronous_commit = {mode}")

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """This process's pool, opened on first use (and again after :meth:`close`)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's pool is the parent's
                _INHERITED.append(self._pool)
                self._pool, self._pid, self._lock = None, os.getpid(), threading.Lock()
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=POOL_MAX,
                    kwargs={"autocommit": True, "connect_timeout": 10},
                    configure=self._configure,
                    name=f"capi-bridge-{self.schema}",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextlib.contextmanager
    def connection(self, wait: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        with self.pool().connection(timeout=CONNECT_WAIT if wait is None else wait) as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, wait: float | None = None) -> Iterator[_Tx]:
        with self.connection(wait) as conn, conn.transaction():
            yield _Tx(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.connection() as conn:
            return conn.execute(_pg(sql), params).fetchall()

    def close(self) -> None:
        """Close this process's connections (a later call opens a new pool)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    # --- enqueue ------------------------------------------------------------------------------

    def append(
        self,
        rows: Sequence[NewRow],
        now: float,
        *,
        tags: Sequence[Tag] = (),
        origin: str = "",
        wait: float | None = None,
    ) -> None:
        """:meth:`enqueue`: the database is the shared durable place (no local journal,
        which a host's loss would take with it)."""
        self.enqueue(rows, now, tags=tags, origin=origin, wait=wait)

    def ingest(self, *, own: bool = False, wait: float | None = None) -> int:
        return 0  # no journal

    def defer_intake(self) -> None:
        pass

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
        """Store rows durably in one statement; returns how many were new. ``wait`` (the
        request path) bounds the wait for a connection and the statement itself."""
        params: dict[str, Any] = {"now": now, "origin": origin, "hold": hold, "n": len(rows)}
        params["state"] = int(HELD if hold is not None else PENDING)
        if len(rows) == 1:
            query = _INSERT_ONE
            params.update((f"a{i}", value) for i, value in enumerate(rows[0]))
            tag: Sequence[Any] = tags[0] if tags else (None,) * 7
            held, filed = (tag, (None,) * 7) if hold is not None else ((None,) * 7, tag)
            params.update((f"h{i}", value) for i, value in enumerate(held))
            params.update((f"o{i}", value) for i, value in enumerate(filed))
        else:
            query = _INSERT_SQL[hold is not None]
            columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)]
            if tags:
                columns += [list(c) for c in zip(*tags, strict=True)]
            else:
                columns += [[None] * len(rows) for _ in range(7)]
            params.update((f"a{i}", column) for i, column in enumerate(columns))
        notify = len(rows) > 1 and hold is None
        with self.connection(wait) as conn:
            if wait is None and not notify:
                return _count(conn.execute(query, params))
            with conn.pipeline(), conn.transaction():
                if wait is not None:
                    conn.execute(f"SET LOCAL statement_timeout = {max(1, int(wait * 1000))}")
                cur = conn.execute(query, params)
                if notify:
                    conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
            return _count(cur)

    def _notify(self, tx: _Tx) -> None:
        tx.execute("SELECT pg_notify(?, '')", (self.channel,))

    # --- held rows ----------------------------------------------------------------------------

    def release(self, hold_key: str, now: float, origin: str = "") -> int:
        """Make the rows held under ``hold_key`` pending, due ``now``; their observations are
        filed now (consent given), never before. Returns how many."""
        with self.write() as tx:
            tx.execute(FILE_OBSERVED_SQL + f"state = {HELD:d} AND hold_key = ?", (now, hold_key))
            count = tx.execute(
                f"UPDATE outbox SET state = {PENDING:d}, hold_key = NULL, due = ?, attempts = 0,"
                f" lease_owner = NULL, lease_until = NULL, origin = ?, {CLEAR_OBSERVED}"
                f" WHERE state = {HELD:d} AND hold_key = ?",
                (now, origin, hold_key),
            ).rowcount
            if count:
                self._notify(tx)
        return count

    def forget(self, hold_key: str) -> int:
        """Delete the rows held under ``hold_key`` (consent refused); their keys go too."""
        return self._drop_held("hold_key = ?", hold_key, None)

    def expire_held(self, created_before: float) -> int:
        """Delete held rows older than ``created_before``, counted in ``held_expired``."""
        return self._drop_held("created < ?", created_before, "held_expired")

    def _drop_held(self, where: str, param: object, counter: str | None) -> int:
        removed = 0
        while True:
            with self.write() as tx:
                n = tx.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                    f" WHERE state = {HELD:d} AND {where} LIMIT ?)",
                    (param, _HELD_CHUNK),
                ).rowcount
                if n and counter is not None:
                    tx.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, counter))
            removed += n
            if n < _HELD_CHUNK:
                return removed

    # --- housekeeping ---------------------------------------------------------------------------

    def prepare(self) -> int:
        """Nothing to do: rows are claimable, and observed, once committed."""
        return 0

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its own WAL."""

    def forget_settled(self, before: float, limit: int = 5000) -> int:
        """Drop delivered/dead keys created before ``before`` (past the dedup window), in
        short transactions by id range (ids follow time)."""
        row = self.query("SELECT id FROM outbox WHERE created >= ? ORDER BY id LIMIT 1", (before,))
        bound = row[0][0] if row else self.mark() + 1
        return self.delete_in_chunks(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id < ?"
            f" AND state IN ({DELIVERED:d}, {DEAD:d}) LIMIT ?)",
            (bound,),
            limit,
        )

    def mark(self) -> int:
        return int(self.query("SELECT coalesce(max(id), 0) FROM outbox")[0][0])

    def pending(self, origin: str, up_to: int) -> bool:
        return bool(
            self.query(
                f"SELECT 1 FROM outbox WHERE origin = ? AND state = {PENDING:d} AND id <= ?"
                " LIMIT 1",
                (origin, up_to),
            )
        )

    # --- wake-ups -------------------------------------------------------------------------------

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """``LISTEN`` on this schema's channel in a thread of its own (its own connection,
        reconnecting after a failure); returns the function that stops it."""
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self.channel)))
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=0.5):
                                wake()
                except psycopg.Error as exc:
                    logger.debug("outbox wake-ups interrupted (%s); reconnecting", exc)
                    stop.wait(1.0)

        thread = threading.Thread(target=run, name="capi-bridge-listen", daemon=True)
        thread.start()

        def stopper() -> None:
            stop.set()
            if thread is not threading.current_thread():
                thread.join(2.0)

        return stopper
