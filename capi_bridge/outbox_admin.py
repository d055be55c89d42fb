"""Looking into the outbox: stats, dead letters, requeue and purge, for ``Bridge`` and the CLI.

Everything here is a few indexed queries on the same SQLite file the dispatchers use, so an
operator sees the state of every worker process at once, and nothing here ever shows user data:
dead letters list the event's name, id, pixel and Meta's reason, never the payload.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from capi_bridge.outbox import DEAD, DELIVERED, HELD, Outbox, chunks


@dataclasses.dataclass(frozen=True)
class LastError:
    """The most recent failed send: Meta's words and trace id, never a payload."""

    at: float
    pixel_id: str
    kind: str
    message: str
    status: int | None = None
    code: int | None = None
    subcode: int | None = None
    fbtrace_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Pause:
    """A pixel whose delivery is paused (open circuit or backoff) until ``until``."""

    pixel_id: str
    kind: str
    until: float
    failures: int


@dataclasses.dataclass(frozen=True)
class OutboxStats:
    """A snapshot of the outbox, across all processes sharing it.

    ``pending`` (never tried), ``retrying`` (tried, waiting for the next attempt) and
    ``in_flight`` (leased by a dispatcher right now) partition the events accepted for delivery
    and not yet settled; ``delivered``, ``dead`` and ``deduplicated`` are totals since the outbox
    was created. ``held`` events wait for a visitor's consent: they are not accepted for delivery
    (not in ``undelivered``, ``flush()`` does not wait for them) until released;
    ``held_expired`` counts those dropped after waiting ``held_ttl``. Counts are rows, one per
    pixel an event goes to.
    """

    path: str
    pending: int
    in_flight: int
    retrying: int
    delivered: int
    dead: int
    deduplicated: int
    oldest_pending_age: float | None
    paused: tuple[Pause, ...]
    last_error: LastError | None
    held: int = 0
    held_expired: int = 0

    @property
    def undelivered(self) -> int:
        """Accepted events still waiting for Meta (pending + retrying + in flight)."""
        return self.pending + self.retrying + self.in_flight

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (for ``--json``, health endpoints and metrics)."""
        out = dataclasses.asdict(self)
        out["paused"] = list(out["paused"])
        out["undelivered"] = self.undelivered
        return out


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One event set aside: what it was (no user data) and why Meta refused it."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    test_event_code: str | None
    failed_at: float
    reason: str
    message: str | None
    code: int | None
    subcode: int | None
    fbtrace_id: str | None


def encode_last_error(error: LastError) -> str:
    return json.dumps(dataclasses.asdict(error), separators=(",", ":"))


def _decode_last_error(text: str | None) -> LastError | None:
    if not text:
        return None
    try:
        return LastError(**json.loads(text))
    except (TypeError, ValueError):
        return None


def read_last_error(outbox: Outbox) -> LastError | None:
    """Meta's most recent error, as :func:`read_stats` reports it (the inspector shows it
    next to the events that are retrying)."""
    last = outbox.query("SELECT value FROM meta WHERE key = 'last_error'")
    return _decode_last_error(last[0][0] if last else None)


def read_stats(outbox: Outbox, now: float) -> OutboxStats:
    """Counts from the partial indexes of unsettled and held rows plus the durable counters."""
    total, in_flight, retrying, oldest = outbox.query(
        "SELECT count(*), coalesce(sum(lease_until > ?1), 0),"
        " coalesce(sum(attempts > 0 AND (lease_until IS NULL OR lease_until <= ?1)), 0),"
        " min(created) FROM outbox INDEXED BY outbox_ready WHERE state = 0",
        (now,),
    )[0]
    fresh, oldest_fresh = outbox.query(
        "SELECT count(*), min(created) FROM outbox WHERE id > ? AND state = 3",
        (outbox.ingested(),),
    )[0]
    total += fresh
    oldest = min((t for t in (oldest, oldest_fresh) if t is not None), default=None)
    held = outbox.query("SELECT count(*) FROM outbox INDEXED BY outbox_held WHERE state = 4")
    counters = dict(outbox.query("SELECT name, value FROM counters"))
    dead = outbox.query("SELECT count(*) FROM dead_letters")[0][0]
    pauses = tuple(
        Pause(pixel, kind, until, failures)
        for pixel, until, kind, failures in outbox.query(
            "SELECT pixel_id, until, kind, failures FROM pauses WHERE until > ? ORDER BY pixel_id",
            (now,),
        )
    )
    last = outbox.query("SELECT value FROM meta WHERE key = 'last_error'")
    return OutboxStats(
        path=outbox.path,
        pending=total - in_flight - retrying,
        in_flight=in_flight,
        retrying=retrying,
        delivered=int(counters.get("delivered", 0)),
        dead=dead,
        deduplicated=int(counters.get("deduplicated", 0)),
        oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
        paused=pauses,
        last_error=_decode_last_error(last[0][0] if last else None),
        held=int(held[0][0]),
        held_expired=int(counters.get("held_expired", 0)),
    )


def dead_letters(outbox: Outbox, limit: int = 50) -> list[DeadLetter]:
    """The most recent dead letters first."""
    rows = outbox.query(
        "SELECT id, pixel_id, event_name, event_id, test_code, failed_at, reason, message, code,"
        " subcode, fbtrace_id FROM dead_letters ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [
        DeadLetter(r[0], r[1], r[2], r[3], r[4] or None, r[5], r[6], r[7], r[8], r[9], r[10])
        for r in rows
    ]


def retry_dead(outbox: Outbox, ids: Sequence[int] | None, now: float) -> int:
    """Put dead letters back in the outbox (all when ``ids`` is None); returns how many."""
    with outbox.write() as conn:
        if ids is None:
            ids = [r[0] for r in conn.execute("SELECT id FROM dead_letters").fetchall()]
        moved = 0
        for marks, part in chunks(ids):
            moved += conn.execute(
                "INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires,"
                " created, due, payload) SELECT pixel_id, event_name, event_id, test_code,"
                f" expires, ?1, ?1, payload FROM dead_letters WHERE id IN ({marks})"
                " ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE SET state = 0,"
                " payload = excluded.payload, due = excluded.due, attempts = 0,"
                " lease_owner = NULL, lease_until = NULL"
                # a held row with that key waits for consent; a retry must not send it
                " WHERE outbox.state != 4",
                (now, *part),
            ).rowcount
            conn.execute(
                f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(part))})", part
            )
    return moved


def purge(
    outbox: Outbox, *, delivered: bool, dead: bool, older_than: float | None, now: float
) -> dict[str, int]:
    """Delete delivered keys and/or dead letters (optionally only older ones).

    Pending events are never purged: the outbox does not drop what it accepted. Deleting
    delivered keys also forgets them for local deduplication.
    """
    cutoff = _cutoff(older_than, now)
    removed = {"delivered": 0, "dead": 0}
    with outbox.write() as conn:
        # The newest row is never deleted: rowids must only grow (see capi_bridge.outbox).
        keep_last = " AND id < (SELECT max(id) FROM outbox)"
        if delivered:
            removed["delivered"] = conn.execute(
                "DELETE FROM outbox WHERE state = ? AND created < ?" + keep_last,
                (DELIVERED, cutoff),
            ).rowcount
        if dead:
            removed["dead"] = conn.execute(
                "DELETE FROM dead_letters WHERE failed_at < ?", (cutoff,)
            ).rowcount
            conn.execute(
                "DELETE FROM outbox WHERE state = ? AND created < ?" + keep_last, (DEAD, cutoff)
            )
    return removed


def _cutoff(older_than: float | None, now: float) -> float:
    """Rows created before this are purged (all of them without ``older_than``)."""
    return now - older_than if older_than is not None else now + 1


@dataclasses.dataclass(frozen=True)
class Kept:
    """What :func:`purge` left of what it was asked to delete, by reason; the CLI explains it.

    ``delivered_young`` and ``dead_young`` were younger than ``older_than``;
    ``delivered_newest`` is 1 when the outbox's newest row is a delivered key old enough to
    go: it stays so that row ids only grow (see :mod:`capi_bridge.outbox`), until a newer row.
    """

    delivered_young: int
    delivered_newest: int
    dead_young: int


def kept_by_purge(
    outbox: Outbox, *, delivered_older_than: float | None, dead_older_than: float | None, now: float
) -> Kept:
    """Count, after :func:`purge` ran with these ages, what it kept and why."""
    young, newest = outbox.query(
        "SELECT coalesce(sum(created >= ?1), 0), coalesce(sum(created < ?1), 0)"
        " FROM outbox WHERE state = ?2",
        (_cutoff(delivered_older_than, now), DELIVERED),
    )[0]
    dead = outbox.query(
        "SELECT count(*) FROM dead_letters WHERE failed_at >= ?",
        (_cutoff(dead_older_than, now),),
    )[0][0]
    return Kept(delivered_young=young, delivered_newest=newest, dead_young=dead)


def retry_preview(outbox: Outbox, ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """Which of ``ids`` (every one when None) are dead letters, and which of those
    :func:`retry_dead` will not requeue because an event with the same key is held for
    consent: the CLI says so instead of counting them silently out."""
    rows = outbox.query(
        "SELECT d.id, EXISTS (SELECT 1 FROM outbox o WHERE o.pixel_id = d.pixel_id"
        " AND o.event_name = d.event_name AND o.event_id = d.event_id AND o.state = ?)"
        " FROM dead_letters d ORDER BY d.id",
        (HELD,),
    )
    wanted = None if ids is None else set(ids)
    found = [(id_, held) for id_, held in rows if wanted is None or id_ in wanted]
    return [id_ for id_, _ in found], [id_ for id_, held in found if held]
