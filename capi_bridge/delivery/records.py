"""What the stores hand back: stats, dead letters, observations, outcomes, diagnostic figures.

Plain frozen dataclasses, the same whichever store produced them, so ``Bridge.stats()``, the
CLI, the inspector and the diagnostics read every store the same way. None of them ever holds
user data: dead letters name the event's name, id, pixel and Meta's reason, never the payload.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from capi_bridge.clock import ClockSkew
from capi_bridge.json_record import JsonRecord
from capi_bridge.observations import Observation


@dataclasses.dataclass(frozen=True)
class LastError(JsonRecord):
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
    """A snapshot of the outbox, across all processes (all hosts) sharing it.

    ``pending`` (never tried), ``retrying`` (tried, waiting for the next attempt) and
    ``in_flight`` (leased by a dispatcher right now) partition the events accepted for delivery
    and not yet settled; ``delivered``, ``dead`` and ``deduplicated`` are totals since the outbox
    was created. ``held`` events wait for a visitor's consent: they are not accepted for delivery
    (not in ``undelivered``, ``flush()`` does not wait for them) until released;
    ``held_expired`` counts those dropped after waiting ``held_ttl``. Counts are rows, one per
    pixel an event goes to. ``buffered`` and ``lost`` are this process's own: rows taken while
    the outbox was unavailable and waiting in memory for it, and rows dropped because that
    bounded buffer was full (see ``Bridge.submit``). ``clock`` is the latest reading of a
    sending machine's clock against Meta's (:mod:`capi_bridge.clock`), None before any answer.
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
    buffered: int = 0
    lost: int = 0
    clock: ClockSkew | None = None

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

    state: str  # pending, in flight, retrying, delivered, dead, held, settled
    fbtrace_id: str | None = None
    events_received: int | None = None
    batch_size: int | None = None
    message: str | None = None
    code: int | None = None
    subcode: int | None = None


@dataclasses.dataclass(frozen=True)
class Figures:
    """The diagnostics' aggregates over a window, as the store computed them (see
    :mod:`capi_bridge.delivery.report` for what each means).

    ``totals``: per event name, (name, count, server copies, browser copies, both, server
    only, pixel_loaded reported, pixel loaded, then one count per match key); ``fbc_ages``:
    (name, age) of server copies; ``refused``: (name, problem, count) the mirror refused;
    ``dead``: (name, reason, message, code, subcode, count) dead letters; ``dropped``: (name,
    reason, count) of the visitor values sent without (a note on a server event).
    """

    totals: list[tuple[Any, ...]]
    fbc_ages: list[tuple[str, int]]
    refused: list[tuple[str, str, int]]
    dead: list[tuple[str, str, str | None, int | None, int | None, int]]
    dropped: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Kept:
    """What a purge left of what it was asked to delete, by reason; the CLI explains it.

    ``delivered_young`` and ``dead_young`` were younger than the age given;
    ``delivered_newest`` is 1 when the outbox's newest row is a delivered key old enough to go:
    the SQLite store keeps it so that row ids only grow, until a newer row comes.
    """

    delivered_young: int
    delivered_newest: int
    dead_young: int


#: One count of browser events the mirror did not store: (event_name, reason, detail, count,
#: last_at); see :mod:`capi_bridge.drops`.
DropRow = tuple[str, str, str, int, float]
