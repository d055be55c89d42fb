"""Operators' side of the SQLite store: stats, requeueing dead letters, purging; and the
dispatcher's housekeeping (WAL checkpoints, forgetting keys past the dedup window).

Everything here is a few indexed queries on the file the dispatchers use, so an operator sees the
state of every worker process at once (``capi-bridge outbox ...``, ``Bridge.stats()``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.clock import ClockSkew
from capi_bridge.delivery.id_ranges import chunks
from capi_bridge.delivery.records import LastError, OutboxStats, Pause
from capi_bridge.delivery.sql_reads import purge_cutoff
from capi_bridge.delivery.sqlite_fresh import FRESH_FLOOR
from capi_bridge.delivery.store import State

PENDING, DELIVERED, DEAD, FRESH, HELD = (int(s) for s in State)
#: Above this many WAL frames (4 KiB each) the dispatcher forces the WAL back to its start.
WAL_RESTART_FRAMES = 8192


class SQLiteAdmin:
    """Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`."""

    location: str

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
            raise NotImplementedError

        def write(self, wait: float | None = None) -> contextlib.AbstractContextManager[Any]:
            raise NotImplementedError

        def ingested(self) -> int:
            raise NotImplementedError

        def mark(self) -> int:
            raise NotImplementedError

        def conn(self) -> sqlite3.Connection:
            raise NotImplementedError

        def delete_in_chunks(self, sql: str, params: Sequence[Any], limit: int) -> int:
            raise NotImplementedError

        def counters(self) -> dict[str, int]:
            raise NotImplementedError

        def last_error(self) -> LastError | None:
            raise NotImplementedError

        def clock_skew(self) -> ClockSkew | None:
            raise NotImplementedError

        def ingest_quietly(self, *, own: bool = False) -> None:
            raise NotImplementedError

    # --- housekeeping (dispatcher thread only) ------------------------------------------------

    def checkpoint(self) -> None:
        """Copy the WAL into the database, and keep the WAL from growing without bound.

        A PASSIVE checkpoint never blocks enqueues, but under a steady stream of commits it
        never catches up with the last frames, so the WAL is never reused and grows by every
        commit. Past WAL_RESTART_FRAMES a RESTART checkpoint holds writers off for the few
        frames written since the PASSIVE one, after which the next commit reuses the WAL
        from its start.
        """
        conn = self.conn()
        _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > WAL_RESTART_FRAMES:
            conn.execute("PRAGMA busy_timeout = 1000")
            try:
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout = 0")

    def forget_settled(self, before: float, limit: int = 5000) -> int:
        """Drop delivered/dead keys created before ``before`` (past the dedup window).

        Rows are roughly in ``created`` order by id, so this finds the first younger row and
        deletes settled rows below it in small transactions: enqueues never wait long.
        """
        row = self.query("SELECT id FROM outbox WHERE created >= ? ORDER BY id LIMIT 1", (before,))
        bound = row[0][0] if row else self.mark() + 1
        return self.delete_in_chunks(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id < ?"
            f" AND state IN ({DELIVERED}, {DEAD}) AND id < (SELECT max(id) FROM outbox) LIMIT ?)",
            (bound,),
            limit,
        )

    # --- operators ----------------------------------------------------------------------------

    def stats(self, now: float) -> OutboxStats:
        """Counts from the partial indexes of unsettled and held rows plus the counters, once
        every process's journaled rows are in (best effort: a locked or read-only outbox is
        counted as it is)."""
        self.ingest_quietly()
        total, in_flight, retrying, oldest = self.query(
            "SELECT count(*), coalesce(sum(lease_until > ?1), 0),"
            " coalesce(sum(attempts > 0 AND (lease_until IS NULL OR lease_until <= ?1)), 0),"
            f" min(created) FROM outbox INDEXED BY outbox_ready WHERE state = {PENDING}",
            (now,),
        )[0]
        fresh, sending, oldest_fresh = self.query(
            f"SELECT count(*), coalesce(sum(id <= ?), 0), min(created) FROM outbox"
            f" WHERE id > {FRESH_FLOOR} AND state = {FRESH}",
            (self.ingested(),),
        )[0]
        total += fresh
        in_flight += sending  # fresh rows of a claim (sqlite_fresh): being sent
        oldest = min((t for t in (oldest, oldest_fresh) if t is not None), default=None)
        held = self.query(
            f"SELECT count(*) FROM outbox INDEXED BY outbox_held WHERE state = {HELD}"
        )
        counters = self.counters()
        pauses = tuple(
            Pause(pixel, kind, until, failures)
            for pixel, until, kind, failures in self.query(
                "SELECT pixel_id, until, kind, failures FROM pauses WHERE until > ?"
                " ORDER BY pixel_id",
                (now,),
            )
        )
        return OutboxStats(
            path=self.location,
            pending=total - in_flight - retrying,
            in_flight=in_flight,
            retrying=retrying,
            delivered=counters.get("delivered", 0),
            dead=int(self.query("SELECT count(*) FROM dead_letters")[0][0]),
            deduplicated=counters.get("deduplicated", 0),
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            paused=pauses,
            last_error=self.last_error(),
            clock=self.clock_skew(),
            held=int(held[0][0]),
            held_expired=counters.get("held_expired", 0),
        )

    def retry_dead(self, ids: Sequence[int] | None, now: float) -> int:
        """Put dead letters back in the outbox (all when ``ids`` is None); returns how many."""
        with self.write() as conn:
            if ids is None:
                ids = [r[0] for r in conn.execute("SELECT id FROM dead_letters").fetchall()]
            moved = 0
            for marks, part in chunks(ids):
                moved += conn.execute(
                    "INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires,"
                    f" created, due, payload, state) SELECT pixel_id, event_name, event_id,"
                    f" test_code, expires, ?1, ?1, payload, {PENDING} FROM dead_letters"
                    f" WHERE id IN ({marks}) ON CONFLICT (pixel_id, event_name, event_id)"
                    f" DO UPDATE SET state = {PENDING}, payload = excluded.payload,"
                    " due = excluded.due, attempts = 0, lease_owner = NULL, lease_until = NULL"
                    # a held row with that key waits for consent; a retry must not send it
                    f" WHERE outbox.state != {HELD}",
                    (now, *part),
                ).rowcount
                conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", part)
        return moved

    def purge(
        self, *, delivered: bool, dead: bool, older_than: float | None, now: float
    ) -> dict[str, int]:
        """Delete delivered keys and/or dead letters (optionally only older ones).

        Pending events are never purged: the outbox does not drop what it accepted. Deleting
        delivered keys also forgets them for deduplication.
        """
        cutoff = purge_cutoff(older_than, now)
        removed = {"delivered": 0, "dead": 0}
        with self.write() as conn:
            keep_last = " AND id < (SELECT max(id) FROM outbox)"  # rowids must only grow
            if delivered:
                removed["delivered"] = conn.execute(
                    f"DELETE FROM outbox WHERE state = {DELIVERED} AND created < ?" + keep_last,
                    (cutoff,),
                ).rowcount
            if dead:
                removed["dead"] = conn.execute(
                    "DELETE FROM dead_letters WHERE failed_at < ?", (cutoff,)
                ).rowcount
                conn.execute(
                    f"DELETE FROM outbox WHERE state = {DEAD} AND created < ?" + keep_last,
                    (cutoff,),
                )
        return removed
