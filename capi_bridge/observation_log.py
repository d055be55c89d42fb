"""Reading and pruning the ``observations`` table, and the delivery state of observed events.

Observations are appended in time order, so their ids stand in for a time index: a window
starts at the first id whose ``at`` is recent enough, found by bisecting ids (a few indexed
look-ups) instead of maintaining an index on ``at`` that every enqueue would pay for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from capi_bridge.observations import Observation
from capi_bridge.outbox import Outbox
from capi_bridge.outbox_admin import LastError, read_last_error

#: Columns of an observation row as read back: its id, then the stored fields.
COLUMNS = (
    "id, at, pixel_id, event_name, event_id, channel, pixel_loaded, twin, keys, fbp_hash,"
    " fbc_age, preview, problem"
)


@dataclasses.dataclass(frozen=True)
class Seen:
    """One stored observation."""

    id: int
    row: Observation

    @classmethod
    def from_row(cls, values: Any) -> Seen:
        return cls(values[0], Observation(*values[1:13]))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Where one (pixel, event name, event id) stands in the outbox, and Meta's last word."""

    state: str  # pending, in flight, retrying, delivered, dead, held, settled, not stored
    fbtrace_id: str | None = None
    events_received: int | None = None
    batch_size: int | None = None
    message: str | None = None
    code: int | None = None
    subcode: int | None = None


def first_id_since(outbox: Outbox, since: float) -> int:
    """A bound such that observations with ``id >= bound`` are those recorded at or after
    ``since`` (ids follow time; several processes may interleave a few milliseconds)."""
    low, high = outbox.query("SELECT coalesce(min(id), 1), coalesce(max(id), 0) FROM observations")[
        0
    ]
    low, high = int(low), int(high) + 1
    while low < high:
        mid = (low + high) // 2  # <= max(id): some row has an id >= mid
        row_id, at = outbox.query(
            "SELECT id, at FROM observations WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
        )[0]
        if at < since:
            low = int(row_id) + 1
        else:
            high = mid  # no row has an id in [mid, row_id)
    return low


def prune(outbox: Outbox, before: float, limit: int = 5000) -> int:
    """Delete observations recorded before ``before``, and deliveries as old, in short
    transactions (enqueues never wait long behind a big prune); returns how many."""
    removed = outbox.delete_in_chunks(
        "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE id < ? LIMIT ?)",
        (first_id_since(outbox, before),),
        limit,
    )
    with outbox.write() as c:
        c.execute("DELETE FROM deliveries WHERE at < ?", (before,))
    return removed


def recent(outbox: Outbox, limit: int) -> list[Seen]:
    """The newest ``limit`` observations, newest first."""
    rows = outbox.query(f"SELECT {COLUMNS} FROM observations ORDER BY id DESC LIMIT ?", (limit,))
    return [Seen.from_row(r) for r in rows]


_STATES = {0: "pending", 1: "delivered", 2: "dead", 3: "pending", 4: "held"}


def outcomes(
    outbox: Outbox, keys: Iterable[tuple[str, str, str]], now: float
) -> dict[tuple[str, str, str], Outcome]:
    """The delivery state of each (pixel, event_name, event_id): a look-up on the outbox's
    unique key each, plus the batch reply or dead letter that settled it."""
    found: dict[tuple[str, str, str], Outcome] = {}
    last_errors: list[LastError | None] = []
    for key in keys:
        if key in found:
            continue
        row = outbox.query(
            "SELECT state, attempts, lease_until, delivery FROM outbox"
            " WHERE pixel_id = ? AND event_name = ? AND event_id = ?",
            key,
        )
        if not row:
            found[key] = Outcome("settled")  # past the dedup window, or purged
            continue
        state, attempts, lease_until, delivery = row[0]
        name = _STATES.get(state, "pending")
        if name == "pending" and lease_until is not None and lease_until > now:
            name = "in flight"
        elif name == "pending" and attempts:
            name = "retrying"
            if not last_errors:  # read once per call, only if some row is retrying
                last_errors.append(read_last_error(outbox))
            last_error = last_errors[0]
            if last_error is not None and last_error.pixel_id == key[0]:
                found[key] = Outcome(
                    name,
                    fbtrace_id=last_error.fbtrace_id,
                    message=last_error.message,
                    code=last_error.code,
                    subcode=last_error.subcode,
                )
                continue
        if name == "delivered" and delivery is not None:
            reply = outbox.query(
                "SELECT fbtrace_id, events_received, events FROM deliveries WHERE id = ?",
                (delivery,),
            )
            if reply:
                found[key] = Outcome(name, reply[0][0], reply[0][1], reply[0][2])
                continue
        if name == "dead":
            letter = outbox.query(
                "SELECT reason, message, code, subcode, fbtrace_id FROM dead_letters"
                " WHERE pixel_id = ? AND event_name = ? AND event_id = ? ORDER BY id DESC LIMIT 1",
                key,
            )
            if letter:
                reason, message, code, subcode, trace = letter[0]
                found[key] = Outcome(
                    name, trace, message=f"{reason}: {message or '-'}", code=code, subcode=subcode
                )
                continue
        found[key] = Outcome(name)
    return found
