"""Leases and settling on the PostgreSQL store: how dispatchers on many hosts share the work.

A claim is one short transaction: the pixel's pause row is read ``FOR UPDATE`` (so exactly one
host sends the probe batch of a half-open circuit), then due rows are picked in order with
``FOR UPDATE SKIP LOCKED`` and leased to the claiming owner, in one statement. Hosts claiming
at the same moment skip each other's rows instead of waiting, and never lease the same row.
Every settling statement checks ``lease_owner``: a reply that arrives after its lease expired
and another host took the rows over changes nothing (the other host's send goes to Meta too,
and Meta deduplicates the pair by event id). All transactions are short, so no long-running
one holds back the cleanup of dead rows (the known way SKIP LOCKED queues bloat).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.delivery.store import NOTHING_TAKEN, Claim, Claimed, State, Taken
from capi_bridge.graph import GraphResult

PENDING, DELIVERED, DEAD = State.PENDING, State.DELIVERED, State.DEAD
_READY = (
    f"FROM outbox WHERE state = {PENDING:d} AND pixel_id = ? AND test_code = ? AND due <= ?"
    " AND (lease_until IS NULL OR lease_until <= ?)"
)
_CLAIM = (
    f"WITH picked AS (SELECT id {_READY} ORDER BY due, id LIMIT ? FOR UPDATE SKIP LOCKED)"
    " UPDATE outbox o SET lease_owner = ?, lease_until = ? FROM picked WHERE o.id = picked.id"
    " RETURNING o.id, o.event_name, o.event_id, o.expires, o.attempts, o.payload, o.due"
)
_SET_LAST_ERROR = (
    "INSERT INTO meta VALUES ('last_error', ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class PostgresLeases:
    """Mixed into :class:`~capi_bridge.delivery.postgres_store.PostgresStore`."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
            raise NotImplementedError

        def write(self, wait: float | None = None) -> contextlib.AbstractContextManager[Any]:
            raise NotImplementedError

    def groups(self) -> list[tuple[str, str]]:
        """Distinct (pixel_id, test_code) with pending rows: a skip-scan over the index."""
        found: list[tuple[str, str]] = []
        head = f"SELECT pixel_id, test_code FROM outbox WHERE state = {PENDING:d}"
        first = self.query(head + " ORDER BY pixel_id, test_code LIMIT 1")
        while first:
            key: tuple[str, str] = (first[0][0], first[0][1])
            found.append(key)
            first = self.query(
                head + " AND (pixel_id, test_code) > (?, ?) ORDER BY pixel_id, test_code LIMIT 1",
                key,
            )
        return found

    def claim(
        self,
        pixel_id: str,
        test_code: str,
        *,
        owner: str,
        now: float,
        limit: int,
        lease: float,
        linger: float,
    ) -> Claim:
        """Lease up to ``limit`` due rows of one group to ``owner`` (see the module
        docstring). A partial batch younger than ``linger`` is left to fill (``wake_at``)."""
        pause = self.query("SELECT until FROM pauses WHERE pixel_id = ?", (pixel_id,))
        if pause and pause[0][0] > now:
            return Claim([], paused_until=pause[0][0])
        key = (pixel_id, test_code, now, now)
        head = self.query(f"SELECT due {_READY} ORDER BY due, id LIMIT 1", key)
        if not head:
            return Claim([])
        young = linger > 0 and head[0][0] > now - linger
        if young and not self.query(
            f"SELECT 1 {_READY} ORDER BY due, id LIMIT 1 OFFSET ?", (*key, limit - 1)
        ):
            return Claim([], wake_at=head[0][0] + linger)
        with self.write() as tx:
            paused = tx.execute(
                "SELECT until FROM pauses WHERE pixel_id = ? FOR UPDATE", (pixel_id,)
            ).fetchall()
            if paused and paused[0][0] > now:
                return Claim([], paused_until=paused[0][0])
            rows = tx.execute(_CLAIM, (*key, limit, owner, now + lease)).fetchall()
            if rows and paused:  # half-open: hold the others off while this batch probes
                tx.execute(
                    "UPDATE pauses SET until = ?, prober = ? WHERE pixel_id = ?",
                    (now + lease, owner, pixel_id),
                )
        rows.sort(key=lambda r: (r[6], r[0]))
        return Claim([Claimed(*r[:6]) for r in rows], probe=bool(paused and rows))

    def take(
        self, *, owner: str, now: float, limit: int, lease: float, linger: float
    ) -> Taken:
        """Nothing to take: rows are claimable, and observed, once committed (see
        :meth:`claim`). The fast path exists for SQLite's fresh rows only."""
        return NOTHING_TAKEN

    def adopt(self, claim: int, ids: Sequence[int], owner: str, until: float) -> list[Claimed]:
        """Never called: :meth:`take` makes no claims here."""
        raise NotImplementedError("the PostgreSQL store makes no fast-path claims")

    def renew(
        self, ids: Sequence[int], owner: str, until: float, claim: int | None = None
    ) -> None:
        """Extend the lease of the rows ``owner`` still holds (``claim`` is always None
        here: :meth:`take` makes none)."""
        with self.write() as tx:
            tx.execute(
                "UPDATE outbox SET lease_until = ? WHERE id = ANY(?) AND lease_owner = ?",
                (until, list(ids), owner),
            )

    def reclaim(self, host: str, is_alive: Callable[[int], bool]) -> int:
        """Never by pid: hosts do not share a pid space. Leases of dead hosts expire."""
        return 0

    def delivered(
        self,
        ids: Sequence[int],
        pixel_id: str,
        owner: str,
        reply: GraphResult | None = None,
        now: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """Mark the rows ``owner`` still holds delivered; True if it lifted a pause
        (``claim`` is always None here: :meth:`take` makes none)."""
        when = time.time() if now is None else now
        with self.write() as tx:
            delivery = None
            if reply is not None:
                delivery = tx.execute(
                    "INSERT INTO deliveries (at, pixel_id, events, events_received, fbtrace_id)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (when, pixel_id, len(ids), reply.events_received, reply.fbtrace_id),
                ).fetchone()[0]
            count = tx.execute(
                f"UPDATE outbox SET state = {DELIVERED:d}, payload = NULL,"
                " attempts = attempts + 1, delivery = ?"
                f" WHERE id = ANY(?) AND state = {PENDING:d} AND lease_owner = ?",
                (delivery, list(ids), owner),
            ).rowcount
            if count:
                tx.execute(
                    "UPDATE counters SET value = value + ? WHERE name = 'delivered'", (count,)
                )
            lifted = tx.execute("DELETE FROM pauses WHERE pixel_id = ?", (pixel_id,)).rowcount
        return bool(lifted > 0)

    def failed(
        self,
        ids: Sequence[int],
        pixel_id: str,
        owner: str,
        *,
        kind: str,
        now: float,
        delay: Callable[[int], float],
        error: str | None,
        burn_attempt: bool,
    ) -> tuple[int, float]:
        """Pause the pixel (consecutive failures counted per pixel, across hosts) and put the
        rows ``owner`` holds back, due when the pause ends; returns (failures, until)."""
        with self.write() as tx:
            row = tx.execute(
                "SELECT failures, kind FROM pauses WHERE pixel_id = ? FOR UPDATE", (pixel_id,)
            ).fetchone()
            failures = (row[0] if row is not None and row[1] == kind else 0) + 1
            until = now + delay(failures)
            tx.execute(
                "INSERT INTO pauses (pixel_id, until, kind, failures, prober)"
                " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (pixel_id) DO UPDATE SET"
                " until = excluded.until, kind = excluded.kind, failures = excluded.failures,"
                " prober = NULL",
                (pixel_id, until, kind, failures),
            )
            tx.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, due = ?,"
                f" attempts = attempts + ? WHERE id = ANY(?) AND state = {PENDING:d}"
                " AND lease_owner = ?",
                (until, 1 if burn_attempt else 0, list(ids), owner),
            )
            if error is not None:
                tx.execute(_SET_LAST_ERROR, (error,))
        return failures, until

    def dead_letter(
        self,
        ids: Sequence[int],
        owner: str | None,
        *,
        reason: str,
        now: float,
        message: str | None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Move rows to ``dead_letters`` with Meta's reason; the outbox keeps their keys.
        ``owner`` None settles whatever the lease (an operator's repair)."""
        mine = "" if owner is None else " AND lease_owner = ?"
        who: tuple[str, ...] = () if owner is None else (owner,)
        with self.write() as tx:
            tx.execute(
                "INSERT INTO dead_letters (pixel_id, event_name, event_id, test_code,"
                " expires, created, failed_at, reason, message, code, subcode, fbtrace_id,"
                " payload) SELECT pixel_id, event_name, event_id, test_code, expires,"
                " created, ?, ?, ?, ?, ?, ?, payload FROM outbox WHERE id = ANY(?)"
                f" AND state = {PENDING:d} AND payload IS NOT NULL{mine}",
                (now, reason, message, code, subcode, fbtrace_id, list(ids), *who),
            )
            tx.execute(
                f"UPDATE outbox SET state = {DEAD:d}, payload = NULL WHERE id = ANY(?)"
                f" AND state = {PENDING:d}{mine}",
                (list(ids), *who),
            )
            if error is not None:
                tx.execute(_SET_LAST_ERROR, (error,))
