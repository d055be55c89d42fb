"""Operators' side of the PostgreSQL store: stats, requeueing dead letters, purging.

The same answers as the SQLite store's (:mod:`capi_bridge.delivery.sqlite_admin`), for every
host sharing the database at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.clock import ClockSkew
from capi_bridge.delivery.records import LastError, OutboxStats, Pause
from capi_bridge.delivery.sql_reads import purge_cutoff
from capi_bridge.delivery.store import State

PENDING, DELIVERED, DEAD, HELD = State.PENDING, State.DELIVERED, State.DEAD, State.HELD


class PostgresAdmin:
    """Mixed into :class:`~capi_bridge.delivery.postgres_store.PostgresStore`."""

    location: str

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
            raise NotImplementedError

        def write(self, wait: float | None = None) -> contextlib.AbstractContextManager[Any]:
            raise NotImplementedError

        def counters(self) -> dict[str, int]:
            raise NotImplementedError

        def last_error(self) -> LastError | None:
            raise NotImplementedError

        def clock_skew(self) -> ClockSkew | None:
            raise NotImplementedError

        def _notify(self, tx: Any) -> None:
            raise NotImplementedError

    # --- operators ----------------------------------------------------------------------------

    def stats(self, now: float) -> OutboxStats:
        total, in_flight, retrying, oldest = self.query(
            "SELECT count(*), coalesce(sum(CASE WHEN lease_until > ? THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN attempts > 0 AND (lease_until IS NULL OR lease_until <= ?)"
            f" THEN 1 ELSE 0 END), 0), min(created) FROM outbox WHERE state = {PENDING:d}",
            (now, now),
        )[0]
        held = self.query(f"SELECT count(*) FROM outbox WHERE state = {HELD:d}")[0][0]
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
            pending=int(total - in_flight - retrying),
            in_flight=int(in_flight),
            retrying=int(retrying),
            delivered=counters.get("delivered", 0),
            dead=int(self.query("SELECT count(*) FROM dead_letters")[0][0]),
            deduplicated=counters.get("deduplicated", 0),
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            paused=pauses,
            last_error=self.last_error(),
            clock=self.clock_skew(),
            held=int(held),
            held_expired=counters.get("held_expired", 0),
        )

    def retry_dead(self, ids: Sequence[int] | None, now: float) -> int:
        """Put dead letters back in the outbox (all when ``ids`` is None); returns how many."""
        with self.write() as tx:
            if ids is None:
                ids = [r[0] for r in tx.execute("SELECT id FROM dead_letters").fetchall()]
            moved = tx.execute(
                "INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires,"
                f" created, due, payload, state) SELECT pixel_id, event_name, event_id,"
                f" test_code, expires, ?, ?, payload, {PENDING:d} FROM dead_letters"
                " WHERE id = ANY(?) ON CONFLICT (pixel_id, event_name, event_id)"
                f" DO UPDATE SET state = {PENDING:d}, payload = excluded.payload,"
                " due = excluded.due, attempts = 0, lease_owner = NULL, lease_until = NULL"
                # a held row with that key waits for consent; a retry must not send it
                f" WHERE outbox.state != {HELD:d}",
                (now, now, list(ids)),
            ).rowcount
            tx.execute("DELETE FROM dead_letters WHERE id = ANY(?)", (list(ids),))
            if moved:
                self._notify(tx)
        return int(moved)

    def purge(
        self, *, delivered: bool, dead: bool, older_than: float | None, now: float
    ) -> dict[str, int]:
        """Delete delivered keys and/or dead letters; pending events are never purged."""
        cutoff = purge_cutoff(older_than, now)
        removed = {"delivered": 0, "dead": 0}
        with self.write() as tx:
            if delivered:
                removed["delivered"] = tx.execute(
                    f"DELETE FROM outbox WHERE state = {DELIVERED:d} AND created < ?", (cutoff,)
                ).rowcount
            if dead:
                removed["dead"] = tx.execute(
                    "DELETE FROM dead_letters WHERE failed_at < ?", (cutoff,)
                ).rowcount
                tx.execute(f"DELETE FROM outbox WHERE state = {DEAD:d} AND created < ?", (cutoff,))
        return removed
