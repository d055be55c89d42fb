"""Leases and outcomes: how dispatchers take rows from the outbox and settle them.

Every function is one short transaction on the shared file, so any process can take over where
another one stopped: ``claim`` leases a batch to one owner (``host:pid:random``), ``delivered``,
``failed`` and ``dead_letter`` settle it, and ``reclaim_dead_owners`` frees what a crashed
process of this host had leased. A pixel whose sends keep failing is *paused* (a row in
``pauses``): while paused nobody sends to it; when the pause ends one dispatcher sends a probe
batch (half-open) and the others wait for its outcome.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from typing import NamedTuple

from capi_bridge.graph import GraphResult
from capi_bridge.outbox import Outbox, chunks
from capi_bridge.outbox_schema import CLEAR_OBSERVED, FILE_OBSERVED_SQL

_READY = (
    "SELECT id, due FROM outbox INDEXED BY outbox_ready WHERE state = 0 AND pixel_id = ?"
    " AND test_code = ? AND due <= ?3 AND (lease_until IS NULL OR lease_until <= ?3)"
)


class Claimed(NamedTuple):
    """One leased row, as the dispatcher needs it."""

    id: int
    event_name: str
    event_id: str
    expires: float
    attempts: int
    payload: str


class Claim(NamedTuple):
    """Result of :func:`claim`: rows, or why none (and when to look again)."""

    rows: list[Claimed]
    wake_at: float | None = None  # a young partial batch lingers until then
    paused_until: float | None = None  # the pixel's circuit is open until then
    probe: bool = False  # the pixel was paused: this batch probes whether Meta recovered


def new_owner_id() -> str:
    """``host:pid:random``: unique per dispatcher, and tells start-up which pid to check."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def ingest(outbox: Outbox, limit: int = 5000) -> int:
    """Make fresh rows claimable: move them into the index, in id order; returns how many.

    Enqueue appends fresh rows outside any index but the idempotency key; this bulk ``UPDATE``
    on a rowid range does the index work off the request path, ``limit`` rows per short
    transaction. The cursor only grows, and ids above it are all fresh or newer. The
    observations the rows carry are filed into ``observations`` in the same transaction.
    """
    moved = 0
    fresh = "id > ? AND id <= ? AND state = 3"
    while outbox.max_id() > outbox.ingested():
        with outbox.write() as conn:
            low = int(conn.execute("SELECT value FROM meta WHERE key = 'ingested'").fetchone()[0])
            high = min(int(conn.execute("SELECT max(id) FROM outbox").fetchone()[0]), low + limit)
            conn.execute(FILE_OBSERVED_SQL + fresh + " ORDER BY id", (None, low, high))
            moved += conn.execute(
                f"UPDATE outbox SET state = 0, {CLEAR_OBSERVED} WHERE {fresh}", (low, high)
            ).rowcount
            conn.execute("UPDATE meta SET value = ? WHERE key = 'ingested'", (str(high),))
    return moved


def groups(outbox: Outbox) -> list[tuple[str, str]]:
    """Distinct (pixel_id, test_code) with pending rows: a skip-scan over the index."""
    found: list[tuple[str, str]] = []
    first = outbox.query(
        "SELECT pixel_id, test_code FROM outbox INDEXED BY outbox_ready WHERE state = 0"
        " ORDER BY pixel_id, test_code LIMIT 1"
    )
    while first:
        key: tuple[str, str] = (first[0][0], first[0][1])
        found.append(key)
        first = outbox.query(
            "SELECT pixel_id, test_code FROM outbox INDEXED BY outbox_ready WHERE state = 0"
            " AND (pixel_id, test_code) > (?, ?) ORDER BY pixel_id, test_code LIMIT 1",
            key,
        )
    return found


def claim(
    outbox: Outbox,
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
    claimable again. The payloads are read after the commit, outside the lock, to keep
    enqueues in other threads and processes waiting as briefly as possible.
    A partial batch whose oldest row is younger than ``linger`` is left alone (``wake_at``
    says when to look again), so fast round trips do not become hundreds of tiny requests;
    that check is a read, without the write lock.
    """
    key = (pixel_id, test_code, now)
    pause = outbox.query("SELECT until FROM pauses WHERE pixel_id = ?", (pixel_id,))
    if pause and pause[0][0] > now:
        return Claim([], paused_until=pause[0][0])
    head = outbox.query(_READY + " ORDER BY due, id LIMIT 1", key)
    if not head:
        return Claim([])
    young = linger > 0 and head[0][1] > now - linger
    if young and not outbox.query(_READY + " ORDER BY due, id LIMIT 1 OFFSET ?", (*key, limit - 1)):
        return Claim([], wake_at=head[0][1] + linger)
    with outbox.write() as conn:
        pause = conn.execute("SELECT until FROM pauses WHERE pixel_id = ?", (pixel_id,)).fetchall()
        if pause and pause[0][0] > now:
            return Claim([], paused_until=pause[0][0])
        ids = [row[0] for row in conn.execute(_READY + " ORDER BY due, id LIMIT ?", (*key, limit))]
        if not ids:
            return Claim([])
        _set_lease(conn, ids, owner, now + lease)
        if pause:  # half-open: hold the others off while this batch probes
            conn.execute(
                "UPDATE pauses SET until = ?, prober = ? WHERE pixel_id = ?",
                (now + lease, owner, pixel_id),
            )
    found: dict[int, Claimed] = {}
    for marks, part in chunks(ids):
        for row in outbox.query(
            "SELECT id, event_name, event_id, expires, attempts, payload FROM outbox"
            f" WHERE id IN ({marks})",
            part,
        ):
            found[row[0]] = Claimed(*row)
    return Claim([found[i] for i in ids if i in found], probe=bool(pause))


def _set_lease(conn: sqlite3.Connection, ids: Sequence[int], owner: str, until: float) -> None:
    for marks, part in chunks(ids):
        conn.execute(
            f"UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id IN ({marks})",
            (owner, until, *part),
        )


def renew(outbox: Outbox, ids: Sequence[int], owner: str, until: float) -> None:
    """Extend a lease (a long bisection must not let another process steal the rows)."""
    with outbox.write() as conn:
        _set_lease(conn, ids, owner, until)


def reclaim_dead_owners(outbox: Outbox, host: str, is_alive: Callable[[int], bool]) -> int:
    """Free rows leased by processes of this host that no longer exist; returns the count.

    Reads without the write lock first (the scan may be long on a big backlog), then
    frees the rows of dead owners by id. A circuit held half-open by a dead prober is
    reopened for probing at once too.
    """
    rows = outbox.query(
        "SELECT id, lease_owner FROM outbox INDEXED BY outbox_ready"
        " WHERE state = 0 AND lease_until > ?",
        (time.time(),),
    )
    probers = outbox.query("SELECT pixel_id, prober FROM pauses WHERE prober IS NOT NULL")
    verdict: dict[str, bool] = {}

    def dead_owner(owner: str) -> bool:
        if owner not in verdict:
            parts = owner.split(":")
            same_host = len(parts) == 3 and parts[0] == host and parts[1].isdigit()
            verdict[owner] = same_host and not is_alive(int(parts[1]))
        return verdict[owner]

    dead = [row_id for row_id, owner in rows if dead_owner(str(owner))]
    stale = [(pixel_id,) for pixel_id, prober in probers if dead_owner(prober)]
    if dead or stale:
        with outbox.write() as c:
            for marks, part in chunks(dead):
                c.execute(
                    "UPDATE outbox SET lease_owner = NULL, lease_until = NULL"
                    f" WHERE state = 0 AND id IN ({marks})",
                    part,
                )
            c.executemany("UPDATE pauses SET until = 0, prober = NULL WHERE pixel_id = ?", stale)
    return len(dead)


# --- settling -----------------------------------------------------------------------------


def delivered(
    outbox: Outbox,
    ids: Sequence[int],
    pixel_id: str,
    reply: GraphResult | None = None,
    now: float | None = None,
) -> bool:
    """Mark rows delivered (keys kept for dedup); returns True if a pause was lifted.

    Meta's ``reply`` (events_received, fbtrace_id) is kept in ``deliveries``, and each row
    points at it, so the inspector can say "delivered, fbtrace_id ..." per event."""
    with outbox.write() as conn:
        delivery = None
        if reply is not None:
            delivery = conn.execute(
                "INSERT INTO deliveries (at, pixel_id, events, events_received, fbtrace_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    time.time() if now is None else now,
                    pixel_id,
                    len(ids),
                    reply.events_received,
                    reply.fbtrace_id,
                ),
            ).lastrowid
        count = 0
        for marks, part in chunks(ids):
            count += conn.execute(
                "UPDATE outbox SET state = 1, payload = NULL, attempts = attempts + 1,"
                f" delivery = ? WHERE state = 0 AND id IN ({marks})",  # not if settled elsewhere
                (delivery, *part),
            ).rowcount
        conn.execute("UPDATE counters SET value = value + ? WHERE name = 'delivered'", (count,))
        lifted = conn.execute("DELETE FROM pauses WHERE pixel_id = ?", (pixel_id,)).rowcount
    return lifted > 0


def failed(
    outbox: Outbox,
    ids: Sequence[int],
    pixel_id: str,
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
    with outbox.write() as conn:
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
        bump = 1 if burn_attempt else 0
        for marks, part in chunks(ids):
            conn.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, due = ?,"
                " attempts = attempts + ?"
                f" WHERE state = 0 AND id IN ({marks})",
                (until, bump, *part),
            )
        if error is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_error', ?)", (error,))
    return failures, until


def dead_letter(
    outbox: Outbox,
    ids: Sequence[int],
    *,
    reason: str,
    now: float,
    message: str | None,
    code: int | None = None,
    subcode: int | None = None,
    fbtrace_id: str | None = None,
    error: str | None = None,
) -> None:
    """Move rows to ``dead_letters`` with Meta's reason; the outbox keeps their keys."""
    with outbox.write() as conn:
        for marks, part in chunks(ids):
            conn.execute(
                "INSERT INTO dead_letters (pixel_id, event_name, event_id, test_code,"
                " expires, created, failed_at, reason, message, code, subcode, fbtrace_id,"
                " payload) SELECT pixel_id, event_name, event_id, test_code, expires,"
                " created, ?, ?, ?, ?, ?, ?, payload FROM outbox"
                f" WHERE state = 0 AND payload IS NOT NULL AND id IN ({marks})",
                (now, reason, message, code, subcode, fbtrace_id, *part),
            )
            conn.execute(
                f"UPDATE outbox SET state = 2, payload = NULL WHERE state = 0 AND id IN ({marks})",
                part,
            )
        if error is not None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_error', ?)", (error,))
