"""Rows held for consent on the SQLite store: stored, deduplicated, never sent until released.

Held rows wait under a ``hold_key`` (the browser's per-tab id): they take their idempotency key
like any row but are never ingested, claimed or sent until :meth:`SQLiteHeld.release`;
``forget`` (consent refused) and ``expire_held`` (waited longer than ``held_ttl``) delete them.
Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`, apart from connections and
enqueue because consent is its own idea with its own invariant (the ingestion cursor, below).
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING

from capi_bridge.delivery.sql_reads import CLEAR_OBSERVED, FILE_OBSERVED_SQL
from capi_bridge.delivery.store import State

PENDING, HELD = int(State.PENDING), int(State.HELD)
_HELD_CHUNK = 5000


def _lower_cursor(conn: sqlite3.Connection) -> None:
    """After deleting rows that may include the highest id: keep the cursors (ingestion and
    observations, see :mod:`capi_bridge.delivery.sqlite_fresh`) at most max(id).

    SQLite gives a new row ``max(id) + 1``; had the deleted highest row been at the cursor, the
    next fresh row would get an id the cursor has passed and never be ingested. The cursor is
    only lowered when it is above the new maximum, so every row is below the old cursor and
    already past ingestion: nothing fresh is skipped or ingested twice.
    """
    conn.execute(
        "UPDATE meta SET value = CAST(min(CAST(value AS INTEGER),"
        " coalesce((SELECT max(id) FROM outbox), 0)) AS TEXT)"
        " WHERE key IN ('ingested', 'observed')"
    )


class SQLiteHeld:
    """Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def write(
            self, wait: float | None = None
        ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
            raise NotImplementedError

    def release(self, hold_key: str, now: float, origin: str = "") -> int:
        """Make the rows held under ``hold_key`` pending, due ``now``; returns how many.

        They keep their payload (so their original event_time and event_id) and their id: an
        id at or below the ingestion cursor is fine, because they go straight to the claimable
        state instead of through ingestion. Expired ones are dead-lettered by the dispatcher
        at claim time, like any event past Meta's window. Consent given, their observations
        are filed now (dated now, so observations stay in time order), never before.
        """
        with self.write() as conn:
            conn.execute(FILE_OBSERVED_SQL + f"state = {HELD} AND hold_key = ?", (now, hold_key))
            return conn.execute(
                f"UPDATE outbox SET state = {PENDING}, hold_key = NULL, due = ?, attempts = 0,"
                f" lease_owner = NULL, lease_until = NULL, origin = ?, {CLEAR_OBSERVED}"
                f" WHERE state = {HELD} AND hold_key = ?",
                (now, origin, hold_key),
            ).rowcount

    def forget(self, hold_key: str) -> int:
        """Delete the rows held under ``hold_key`` (consent refused); returns how many.

        Deleted, not settled: their keys go too, so the same event may still be sent should
        the visitor consent later. Their observations go with them, never filed.
        """
        return self._drop_held("hold_key = ?", hold_key, counter=None)

    def expire_held(self, created_before: float) -> int:
        """Delete held rows stored before ``created_before`` (waited too long for consent);
        they are counted in ``held_expired``. Returns how many."""
        return self._drop_held("created < ?", created_before, counter="held_expired")

    def _drop_held(self, where: str, param: object, *, counter: str | None) -> int:
        """Delete held rows matching ``where`` in short transactions, so enqueues never wait
        long behind a big expiry."""
        removed = 0
        while True:
            with self.write() as c:
                n = c.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_held"
                    f" WHERE state = {HELD} AND {where} LIMIT ?)",
                    (param, _HELD_CHUNK),
                ).rowcount
                if n:
                    _lower_cursor(c)
                    if counter is not None:
                        c.execute(
                            "UPDATE counters SET value = value + ? WHERE name = ?", (n, counter)
                        )
            removed += n
            if n < _HELD_CHUNK:
                return removed
