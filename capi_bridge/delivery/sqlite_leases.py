"""Leases and settling on the SQLite store: how dispatchers take rows and put them back.

Every method is one short transaction on the shared file, so any process can take over where
another one stopped: ``claim`` leases a batch to one owner (``host:pid:random``),
``delivered``, ``failed`` and ``dead_letter`` settle it (only rows the caller still owns), and
``reclaim`` frees what a crashed process of this host had leased. A pixel whose sends keep
failing is *paused* (a row in ``pauses``): while paused nobody sends to it; when the pause ends
one dispatcher sends a probe batch (half-open) and the others wait for its outcome. New rows
usually skip ``claim``: :mod:`capi_bridge.delivery.sqlite_fresh` sends them as stored, and only
those whose send fails come here (``adopt``), with retries, probes and expired claims.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.delivery.id_ranges import chunks, id_sets
from capi_bridge.delivery.sql_reads import CLEAR_OBSERVED
from capi_bridge.delivery.sqlite_fresh import close_if_settled, file_new_observations, owned_range
from capi_bridge.delivery.store import Claim, Claimed, State
from capi_bridge.graph import GraphResult

PENDING, DELIVERED, DEAD, FRESH = State.PENDING, State.DELIVERED, State.DEAD, State.FRESH
_READY = (
    "SELECT id, due FROM outbox INDEXED BY outbox_ready WHERE state = 0 AND pixel_id = ?"
    " AND test_code = ? AND due <= ?3 AND (lease_until IS NULL OR lease_until <= ?3)"
)


def dead_owner_check(host: str, is_alive: Callable[[int], bool]) -> Callable[[str], bool]:
    """``owner -> bool``: is this lease owner a process of ``host`` that no longer runs?"""
    verdict: dict[str, bool] = {}

    def dead(owner: str) -> bool:
        if owner not in verdict:
            parts = owner.split(":")
            same_host = len(parts) == 3 and parts[0] == host and parts[1].isdigit()
            verdict[owner] = same_host and not is_alive(int(parts[1]))
        return verdict[owner]

    return dead


class SQLiteLeases:
    """Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
            raise NotImplementedError

        def write(self, wait: float | None = None) -> contextlib.AbstractContextManager[Any]:
            raise NotImplementedError

        def mark(self) -> int:
            raise NotImplementedError

        def ingested(self) -> int:
            raise NotImplementedError

        def reclaim_claims(self, dead_owner: Callable[[str], bool]) -> int:
            raise NotImplementedError

    def prepare(self, limit: int = 5000) -> int:
        """Make fresh rows claimable: move them into the indexes, in id order; returns how
        many.

        The dispatcher sends fresh rows without moving them (:meth:`SQLiteFresh.take`); this
        is for readers that want every observation filed now (diagnostics) and for the
        classic path: a bulk ``UPDATE`` on a rowid range, ``limit`` rows per short
        transaction. The cursor only grows, and ids above it are all fresh or newer. The
        observations the rows carry are filed in the same transaction (those not filed yet).
        """
        moved = 0
        fresh = f"id > ? AND id <= ? AND state = {FRESH:d}"
        while self.mark() > self.ingested():
            with self.write() as conn:
                file_new_observations(conn)
                cursor = conn.execute("SELECT value FROM meta WHERE key = 'ingested'")
                low = int(cursor.fetchone()[0])
                top = int(conn.execute("SELECT max(id) FROM outbox").fetchone()[0])
                high = min(top, low + limit)
                moved += conn.execute(
                    f"UPDATE outbox SET state = {PENDING:d}, {CLEAR_OBSERVED} WHERE {fresh}",
                    (low, high),
                ).rowcount
                conn.execute("UPDATE meta SET value = ? WHERE key = 'ingested'", (str(high),))
        return moved

    def groups(self) -> list[tuple[str, str]]:
        """Distinct (pixel_id, test_code) with pending rows: a skip-scan over the index."""
        found: list[tuple[str, str]] = []
        first = self.query(
            "SELECT pixel_id, test_code FROM outbox INDEXED BY outbox_ready WHERE state = 0"
            " ORDER BY pixel_id, test_code LIMIT 1"
        )
        while first:
            key: tuple[str, str] = (first[0][0], first[0][1])
            found.append(key)
            first = self.query(
                "SELECT pixel_id, test_code FROM outbox INDEXED BY outbox_ready WHERE state = 0"
                " AND (pixel_id, test_code) > (?, ?) ORDER BY pixel_id, test_code LIMIT 1",
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
        """Lease up to ``limit`` due rows of one group to ``owner``, atomically.

        Selecting and leasing run in one ``BEGIN IMMEDIATE`` transaction (the write lock is
        held throughout, so two dispatchers never lease the same row); an expired lease is
        claimable again. The payloads are read after the commit, outside the lock. A partial
        batch whose oldest row is younger than ``linger`` is left alone (``wake_at`` says when
        to look again), so fast round trips do not become hundreds of tiny requests; that
        check is a read, without the write lock.
        """
        key = (pixel_id, test_code, now)
        pause = self.query("SELECT until FROM pauses WHERE pixel_id = ?", (pixel_id,))
        if pause and pause[0][0] > now:
            return Claim([], paused_until=pause[0][0])
        head = self.query(_READY + " ORDER BY due, id LIMIT 1", key)
        if not head:
            return Claim([])
        young = linger > 0 and head[0][1] > now - linger
        if young and not self.query(
            _READY + " ORDER BY due, id LIMIT 1 OFFSET ?", (*key, limit - 1)
        ):
            return Claim([], wake_at=head[0][1] + linger)
        with self.write() as conn:
            pause = conn.execute("SELECT until FROM pauses WHERE pixel_id = ?", (pixel_id,))
            paused = pause.fetchall()
            if paused and paused[0][0] > now:
                return Claim([], paused_until=paused[0][0])
            rows = conn.execute(_READY + " ORDER BY due, id LIMIT ?", (*key, limit))
            ids = [row[0] for row in rows]
            if not ids:
                return Claim([])
            _set_lease(conn, ids, owner, now + lease, None)
            if paused:  # half-open: hold the others off while this batch probes
                conn.execute(
                    "UPDATE pauses SET until = ?, prober = ? WHERE pixel_id = ?",
                    (now + lease, owner, pixel_id),
                )
        found = {row.id: row for row in self.leased(ids, owner)}
        return Claim([found[i] for i in ids if i in found], probe=bool(paused))

    def leased(self, ids: Sequence[int], owner: str) -> list[Claimed]:
        """The rows among ``ids`` leased to ``owner``, in id order, payloads included: read
        after the lease is committed, outside the write lock."""
        found: list[Claimed] = []
        for where, part in id_sets(ids):
            found += (
                Claimed(*row)
                for row in self.query(
                    "SELECT id, event_name, event_id, expires, attempts, payload FROM outbox"
                    f" WHERE {where} AND state = {PENDING:d} AND lease_owner = ?",
                    (*part, owner),
                )
            )
        return sorted(found)

    def renew(self, ids: Sequence[int], owner: str, until: float, claim: int | None = None) -> None:
        """Extend a lease (a long bisection must not let another process steal the rows);
        rows of a fast-path ``claim`` by extending the claim."""
        with self.write() as conn:
            if claim is not None:
                conn.execute(
                    "UPDATE claims SET until = ? WHERE id = ? AND owner = ?", (until, claim, owner)
                )
                return
            _set_lease(conn, ids, owner, until, owner)

    def reclaim(self, host: str, is_alive: Callable[[int], bool]) -> int:
        """Free rows leased by processes of this host that no longer exist; returns the count.

        Reads without the write lock first (the scan may be long on a big backlog), then
        frees the rows of dead owners by id. A circuit held half-open by a dead prober is
        reopened for probing at once too.
        """
        rows = self.query(
            "SELECT id, lease_owner FROM outbox INDEXED BY outbox_ready"
            " WHERE state = 0 AND lease_until > ?",
            (time.time(),),
        )
        probers = self.query("SELECT pixel_id, prober FROM pauses WHERE prober IS NOT NULL")
        dead_owner = dead_owner_check(host, is_alive)
        dead = [row_id for row_id, owner in rows if dead_owner(str(owner))]
        stale = [(pixel_id,) for pixel_id, prober in probers if dead_owner(prober)]
        freed = self.reclaim_claims(dead_owner)
        if dead or stale:
            with self.write() as c:
                for marks, part in chunks(dead):
                    c.execute(
                        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL"
                        f" WHERE state = 0 AND id IN ({marks})",
                        part,
                    )
                c.executemany(
                    "UPDATE pauses SET until = 0, prober = NULL WHERE pixel_id = ?", stale
                )
        return freed + len(dead)

    # --- settling -------------------------------------------------------------------------

    def delivered(
        self,
        ids: Sequence[int],
        pixel_id: str,
        owner: str,
        reply: GraphResult | None = None,
        now: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """Mark the rows ``owner`` still holds delivered (keys kept for dedup); returns True if
        a pause was lifted. Meta's ``reply`` (events_received, fbtrace_id) is kept in
        ``deliveries`` and each row points at it, for the inspector. Rows of a fast-path
        ``claim`` are fresh rows of a claim ``owner`` still holds (see :mod:`.sqlite_fresh`)."""
        when = time.time() if now is None else now
        mine, who = f"state = {PENDING:d} AND lease_owner = ?", [owner]
        if claim is not None:
            mine, who = f"state = {FRESH:d}", []
        with self.write() as conn:
            bounds = None if claim is None else owned_range(conn, claim, owner)
            if claim is not None and bounds is None:  # expired: the rows are not ours now
                return False
            delivery = None
            if reply is not None:
                delivery = conn.execute(
                    "INSERT INTO deliveries (at, pixel_id, events, events_received, fbtrace_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (when, pixel_id, len(ids), reply.events_received, reply.fbtrace_id),
                ).lastrowid
            count = 0
            for where, part in id_sets(ids):
                count += conn.execute(
                    f"UPDATE outbox SET state = {DELIVERED:d}, payload = NULL,"
                    f" attempts = attempts + 1, delivery = ?, {CLEAR_OBSERVED}"
                    f" WHERE {where} AND {mine}",
                    (delivery, *part, *who),
                ).rowcount
            conn.execute("UPDATE counters SET value = value + ? WHERE name = 'delivered'", (count,))
            if claim is not None and bounds is not None:
                close_if_settled(conn, claim, *bounds)
            lifted = conn.execute("DELETE FROM pauses WHERE pixel_id = ?", (pixel_id,)).rowcount
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
        """A send failed: pause the pixel and put the rows back, due when the pause ends.

        ``delay(failures)`` gets the pixel's consecutive-failure count, so the backoff grows
        for the pixel as a whole, not per batch (fresh batches would otherwise reset it).
        Returns (failures, until).
        """
        with self.write() as conn:
            row = conn.execute(
                "SELECT failures, kind FROM pauses WHERE pixel_id = ?", (pixel_id,)
            ).fetchone()
            failures = (row[0] if row is not None and row[1] == kind else 0) + 1
            until = now + delay(failures)
            conn.execute(
                "INSERT OR REPLACE INTO pauses (pixel_id, until, kind, failures, prober)"
                " VALUES (?, ?, ?, ?, NULL)",
                (pixel_id, until, kind, failures),
            )
            for where, part in id_sets(ids):
                conn.execute(
                    "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, due = ?,"
                    f" attempts = attempts + ? WHERE {where} AND state = 0 AND lease_owner = ?",
                    (until, 1 if burn_attempt else 0, *part, owner),
                )
            if error is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_error', ?)", (error,))
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
        with self.write() as conn:
            for where, part in id_sets(ids):
                conn.execute(
                    "INSERT INTO dead_letters (pixel_id, event_name, event_id, test_code,"
                    " expires, created, failed_at, reason, message, code, subcode, fbtrace_id,"
                    " payload) SELECT pixel_id, event_name, event_id, test_code, expires,"
                    " created, ?, ?, ?, ?, ?, ?, payload FROM outbox"
                    f" WHERE {where} AND state = 0 AND payload IS NOT NULL{mine}",
                    (now, reason, message, code, subcode, fbtrace_id, *part, *who),
                )
                conn.execute(
                    f"UPDATE outbox SET state = {DEAD:d}, payload = NULL WHERE {where}"
                    f" AND state = 0{mine}",
                    (*part, *who),
                )
            if error is not None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_error', ?)", (error,))


def _set_lease(
    conn: sqlite3.Connection, ids: Sequence[int], owner: str, until: float, held_by: str | None
) -> None:
    """Lease rows to ``owner`` until ``until``; with ``held_by``, only rows it still holds."""
    mine = "" if held_by is None else " AND lease_owner = ?"
    who: tuple[str, ...] = () if held_by is None else (held_by,)
    for where, part in id_sets(ids):
        conn.execute(
            f"UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE {where}{mine}",
            (owner, until, *part, *who),
        )
