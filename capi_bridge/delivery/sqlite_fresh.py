"""The SQLite store's fast path: fresh rows sent as they were stored, leased as one range.

An enqueued row is *fresh*: appended in id order, in no index but its idempotency key. The
classic path (:meth:`SQLiteLeases.prepare` then :meth:`SQLiteLeases.claim`) rewrites every row
twice before it is sent, once to move it into the claimable indexes and once to lease it, then a
third time to settle it, each under the write lock the request path's inserts wait for.
``take`` leases the oldest fresh rows instead as one *claim*: a row in ``claims`` naming the
owner, the id range and a deadline. The outbox rows are not touched until they are settled, so
the dispatcher's work per event is one rewrite (``delivered``) and its time under the write lock
about a third of the classic path's (``benchmarks/delivery.py``, issue 14).

Only a send that fails leaves the fast path: :meth:`adopt` moves those rows into the classic
leases, where backoff, bisection and dead letters work as they always have. A claim whose owner
died (a local pid that no longer runs, at start-up) or whose deadline passed is *expired*: its
fresh rows become pending, claimable by anyone, in the same transaction that deletes it. Rows of
a paused pixel never take the fast path: the half-open probe is the classic claim's.

Invariants (see also the ingestion cursor in :mod:`capi_bridge.delivery.sqlite_store`):

* a fresh row at or below the ``ingested`` cursor lies in exactly one live claim's range;
* a fresh row at or below the ``observed`` cursor has had its observation filed, once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.delivery.id_ranges import id_sets
from capi_bridge.delivery.sql_reads import CLEAR_OBSERVED, FILE_OBSERVED_SQL
from capi_bridge.delivery.store import NOTHING_TAKEN, Claimed, State, Taken, TakenGroup

PENDING, FRESH = int(State.PENDING), int(State.FRESH)

#: The ingestion cursor, as a subquery.
_INGESTED = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'ingested')"
#: The lowest id a fresh row can have minus one: the ingestion cursor, or below the oldest
#: live claim. Readers that look for unsettled fresh rows start above it.
FRESH_FLOOR = (
    f"min({_INGESTED}, coalesce((SELECT min(low) - 1 FROM claims), 9223372036854775807))"
)
#: A claim's rows by group, one result row per group: reading 1000 rows one by one is 1000
#: steps of the VM, each of which lets go of the GIL and must wait to get it back while a
#: request thread runs Python (up to the 5 ms switch interval); aggregated, the whole batch
#: comes back in a step or two. ``group_concat`` sees the rows in the same order for both.
_TAKEN_GROUPS = (
    "SELECT pixel_id, test_code, group_concat(id), min(expires), group_concat(payload, ',')"
    f" FROM outbox WHERE id BETWEEN ? AND ? AND state = {FRESH} GROUP BY pixel_id, test_code"
)
#: The same for a claim whose rows are all of one group (one pixel, the usual case), told by
#: :data:`_TAKE_RANGE`: one pass in id order, where ``GROUP BY`` first copies every row, its
#: payload included, into a sorter (a quarter of the take's time).
_TAKEN_ONE_GROUP = (
    "SELECT ?, ?, group_concat(id), min(expires), group_concat(payload, ',')"
    f" FROM outbox WHERE id BETWEEN ? AND ? AND state = {FRESH}"
)
#: In the take's transaction, one statement (each one lets go of the GIL, and a request thread
#: running Python makes it wait up to 5 ms to get it back): the ingestion cursor, the last id
#: of the next ``limit`` fresh rows above it, whether they are all of one group (which), and
#: whether any pixel is paused.
_TAKE_RANGE = (
    f"SELECT {_INGESTED}, max(id), min(pixel_id), max(pixel_id), min(test_code), max(test_code),"
    " EXISTS (SELECT 1 FROM pauses) FROM (SELECT id, pixel_id, test_code FROM outbox"
    f" WHERE id > {_INGESTED} AND state = {FRESH} ORDER BY id LIMIT ?)"
)


def file_new_observations(conn: sqlite3.Connection) -> None:
    """File the observations of fresh rows stored since the last call, without touching the
    rows: the ``observed`` cursor says which are filed."""
    low, top = conn.execute(  # one statement: each lets go of the GIL (see _TAKE_RANGE)
        "SELECT CAST((SELECT value FROM meta WHERE key = 'observed') AS INTEGER),"
        " (SELECT max(id) FROM outbox)"
    ).fetchone()
    if top is not None and top > low:
        new = f"id > ? AND id <= ? AND state = {FRESH}"
        conn.execute(FILE_OBSERVED_SQL + new, (None, low, top))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'observed'", (str(top),))


def expire_claims(conn: sqlite3.Connection, where: str, params: Sequence[Any] = ()) -> int:
    """Make the fresh rows of the claims matching ``where`` pending for anyone, and delete
    those claims; returns how many rows."""
    moved = 0
    for claim, low, high in conn.execute(f"SELECT id, low, high FROM claims WHERE {where}", params):
        moved += conn.execute(
            f"UPDATE outbox SET state = {PENDING}, {CLEAR_OBSERVED}"
            f" WHERE id BETWEEN ? AND ? AND state = {FRESH}",
            (low, high),
        ).rowcount
        conn.execute("DELETE FROM claims WHERE id = ?", (claim,))
    return moved


def owned_range(conn: sqlite3.Connection, claim: int, owner: str) -> tuple[int, int] | None:
    """(low, high) of ``claim`` if ``owner`` still holds it (it was not expired)."""
    row = conn.execute(
        "SELECT low, high FROM claims WHERE id = ? AND owner = ?", (claim, owner)
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def any_fresh(conn: sqlite3.Connection, low: int, high: int) -> bool:
    """Is a row with ``low <= id <= high`` still fresh?"""
    return bool(
        conn.execute(
            f"SELECT 1 FROM outbox WHERE id BETWEEN ? AND ? AND state = {FRESH} LIMIT 1",
            (low, high),
        ).fetchone()
    )


def close_if_settled(conn: sqlite3.Connection, claim: int, low: int, high: int) -> None:
    """Delete ``claim`` once none of its rows is fresh any more (one statement)."""
    conn.execute(
        "DELETE FROM claims WHERE id = ? AND NOT EXISTS (SELECT 1 FROM outbox"
        f" WHERE id BETWEEN ? AND ? AND state = {FRESH})",
        (claim, low, high),
    )


class SQLiteFresh:
    """Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`."""

    if TYPE_CHECKING:  # provided by the store class this is mixed into

        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
            raise NotImplementedError

        def write(
            self, wait: float | None = None
        ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
            raise NotImplementedError

        def leased(self, ids: Sequence[int], owner: str) -> list[Claimed]:
            raise NotImplementedError

    def take(self, *, owner: str, now: float, limit: int, lease: float, linger: float) -> Taken:
        """See :meth:`~capi_bridge.delivery.store.Store.take`.

        Reads first, without the write lock: nothing new and no expired claim costs two
        small reads. The write transaction expires claims past their deadline, files new
        observations, moves fresh rows of paused pixels to the classic path, records the
        claim and moves the cursor; the payloads are read after it commits.
        """
        ((cursor, observed, top, stale),) = self.query(
            f"SELECT {_INGESTED},"
            " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'observed'),"
            " coalesce((SELECT max(id) FROM outbox), 0),"
            " EXISTS (SELECT 1 FROM claims WHERE until <= ?)",
            (now,),
        )
        if top <= cursor and top <= observed and not stale:
            return NOTHING_TAKEN
        wake_at = None
        if linger > 0 and top > cursor:
            count, oldest = self.query(
                f"SELECT count(*), min(created) FROM (SELECT created FROM outbox WHERE id > ?"
                f" AND state = {FRESH} ORDER BY id LIMIT ?)",
                (cursor, limit),
            )[0]
            if count and count < limit and oldest > now - linger:
                wake_at = oldest + linger
        with self.write() as conn:
            if stale:
                expire_claims(conn, "until <= ?", (now,))
            file_new_observations(conn)
            if wake_at is not None:
                return Taken(None, {}, wake_at)
            low, last, pixel, pixel_max, code, code_max, paused_any = conn.execute(
                _TAKE_RANGE, (limit,)
            ).fetchone()
            if last is None:  # only held rows up there: nothing fresh, and a fresh row only
                conn.execute(  # ever comes with a new, higher id, so the cursor moves past them
                    "UPDATE meta SET value = CAST((SELECT max(id) FROM outbox) AS TEXT)"
                    " WHERE key = 'ingested'"
                )
                return NOTHING_TAKEN
            conn.execute("UPDATE meta SET value = ? WHERE key = 'ingested'", (str(last),))
            one_group = pixel == pixel_max and code == code_max
            if paused_any:  # a paused pixel's rows wait for its probe, classically
                paused = conn.execute(
                    f"UPDATE outbox SET state = {PENDING}, {CLEAR_OBSERVED} WHERE id > ?"
                    f" AND id <= ? AND state = {FRESH}"
                    " AND pixel_id IN (SELECT pixel_id FROM pauses)",
                    (low, last),
                ).rowcount
                if paused and not any_fresh(conn, low + 1, last):
                    return NOTHING_TAKEN  # all of them were a paused pixel's
                one_group = one_group and not paused
            claim = conn.execute(
                "INSERT INTO claims (owner, low, high, until) VALUES (?, ?, ?, ?)",
                (owner, low + 1, last, now + lease),
            ).lastrowid
        assert claim is not None
        read = (_TAKEN_ONE_GROUP, (pixel, code, low + 1, last)) if one_group else None
        groups = {
            (pixel_id, test_code): TakenGroup(
                [int(i) for i in ids.split(",")], float(soonest), payloads
            )
            for pixel_id, test_code, ids, soonest, payloads in self.query(
                *(read or (_TAKEN_GROUPS, (low + 1, last)))
            )
            if ids is not None
        }
        return Taken(claim, groups)

    def adopt(self, claim: int, ids: Sequence[int], owner: str, until: float) -> list[Claimed]:
        """See :meth:`~capi_bridge.delivery.store.Store.adopt`."""
        with self.write() as conn:
            bounds = owned_range(conn, claim, owner)
            if bounds is None:  # expired: its rows are anyone's pending rows now
                return []
            for where, part in id_sets(ids):
                conn.execute(
                    f"UPDATE outbox SET state = {PENDING}, lease_owner = ?, lease_until = ?,"
                    f" {CLEAR_OBSERVED} WHERE {where} AND state = {FRESH}",
                    (owner, until, *part),
                )
            close_if_settled(conn, claim, *bounds)
        return self.leased(ids, owner)

    def reclaim_claims(self, dead_owner: Callable[[str], bool]) -> int:
        """Expire the claims of owners ``dead_owner`` names; returns how many rows it freed."""
        owners = {owner for (owner,) in self.query("SELECT DISTINCT owner FROM claims")}
        dead = sorted(owner for owner in owners if dead_owner(owner))
        if not dead:
            return 0
        with self.write() as conn:
            marks = ",".join("?" * len(dead))
            return expire_claims(conn, f"owner IN ({marks})", dead)

    def fresh_rows(self, bound: int) -> int:
        """Unsettled fresh rows, up to ``bound`` (see ``SqlReads.waiting``)."""
        return int(
            self.query(
                f"SELECT count(*) FROM (SELECT 1 FROM outbox WHERE id > {FRESH_FLOOR}"
                f" AND state = {FRESH} LIMIT ?) AS w",
                (bound,),
            )[0][0]
        )

    def pending(self, origin: str, up_to: int) -> bool:
        """Is a row of ``origin`` with ``id <= up_to`` still neither delivered nor dead?"""
        return bool(
            self.query(
                f"SELECT 1 FROM outbox WHERE id > {FRESH_FLOOR} AND id <= ? AND state = {FRESH}"
                " AND origin = ? LIMIT 1",
                (up_to, origin),
            )
            or self.query(
                "SELECT 1 FROM outbox INDEXED BY outbox_mine WHERE origin = ?"
                f" AND state = {PENDING} AND id <= ? LIMIT 1",
                (origin, up_to),
            )
        )
