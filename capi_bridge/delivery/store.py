"""The outbox store interface: what the dispatcher, ``Bridge`` and the tools need from storage.

Two stores implement it: :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore` (one file on
one host, the default) and :class:`~capi_bridge.delivery.postgres_store.PostgresStore` (one
database shared by several hosts). Everything above this interface (dispatcher, retry policy,
``Bridge``, the inspector, diagnostics and the CLI) is written once against :class:`Store`; the
SQL lives in the stores and nowhere else.

The contract every store keeps:

* **Accepted means committed**: ``enqueue`` returns after the rows are durable; the
  (pixel, event_name, event_id) key is the idempotency check, so a repeat inserts nothing.
* **Leases**: ``claim`` leases due rows of one (pixel, test code) group to one owner until a
  deadline; no two owners hold the same row while leases are healthy, and an expired lease is
  claimable again.
* **Owner-checked settling**: ``delivered``, ``failed`` and ``dead_letter`` only touch rows the
  caller still owns, so a late reply under an expired lease cannot overwrite the new owner's.
* **Shared state**: consent holds, dead letters, pauses (the per-pixel circuit), counters and
  observations live in the store, so every process (every host) sees the same.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from capi_bridge.clock import ClockSkew
from capi_bridge.delivery.records import (
    DeadLetter,
    DropRow,
    Figures,
    Kept,
    OutboxStats,
    Outcome,
    Seen,
)
from capi_bridge.errors import CapiBridgeError
from capi_bridge.graph import GraphResult
from capi_bridge.observations import Observation, Tag

#: One row to store: pixel_id, event_name, event_id, test_code, expires, payload.
NewRow = tuple[str, str, str, str, float, str]
#: An event's key in the outbox: pixel_id, event_name, event_id.
Key = tuple[str, str, str]


class State(enum.IntEnum):
    """A row's state. FRESH exists in the SQLite store only (rows not yet indexed)."""

    PENDING = 0  # accepted, waiting for a dispatcher (maybe leased, maybe backing off)
    DELIVERED = 1  # Meta took it; the key stays for the dedup window, the payload is gone
    DEAD = 2  # set aside in dead_letters with Meta's reason; the key stays
    FRESH = 3  # SQLite: stored, in no index but its key; sent as is (see sqlite_fresh)
    HELD = 4  # waiting for the visitor's consent under a hold key; never sent until released


class Claimed(NamedTuple):
    """One leased row, as the dispatcher needs it."""

    id: int
    event_name: str
    event_id: str
    expires: float
    attempts: int
    payload: str


class Claim(NamedTuple):
    """Result of :meth:`Store.claim`: rows, or why none (and when to look again)."""

    rows: list[Claimed]
    wake_at: float | None = None  # a young partial batch lingers until then
    paused_until: float | None = None  # the pixel's circuit is open until then
    probe: bool = False  # the pixel was paused: this batch probes whether Meta recovered


class TakenGroup(NamedTuple):
    """The rows of one (pixel_id, test_code) group in a :class:`Taken` claim, read in one go:
    their ids, the soonest expiry among them, and their payloads joined by commas (the
    ``data`` of one request as it stands: no row is read one by one, see
    :meth:`Store.take`)."""

    ids: list[int]
    soonest: float
    payloads: str


class Taken(NamedTuple):
    """Result of :meth:`Store.take`: the oldest fresh rows leased to one owner as one claim,
    by (pixel_id, test_code) group, or none (and when to look again)."""

    claim: int | None
    groups: dict[tuple[str, str], TakenGroup]
    wake_at: float | None = None  # a young partial batch lingers until then

    @property
    def size(self) -> int:
        """How many rows were taken."""
        return sum(len(group.ids) for group in self.groups.values())


NOTHING_TAKEN = Taken(None, {})


class OutboxUnavailable(CapiBridgeError):
    """The outbox could not store an event (disk full, read-only, locked too long, database
    down).

    Nothing was stored: the caller should answer 503 so the client may retry, rather than
    report success for an event that would be lost.
    """

    def __init__(self, path: str, cause: BaseException) -> None:
        self.path = path
        super().__init__(
            f"the outbox at {path} cannot store events ({cause}); nothing was stored. Fix: "
            "check free disk space and that the app's user can write the file and its "
            "directory, or that the database answers"
        )


class StoreError(CapiBridgeError):
    """The outbox cannot be opened: a missing file or schema, a database that does not
    answer, a file that is not an outbox."""

    def __init__(self, location: str, cause: BaseException) -> None:
        self.location = location
        super().__init__(f"cannot open the outbox at {location}: {cause}")


class Store(Protocol):
    """What delivery needs from an outbox; see the module docstring for the guarantees."""

    #: Where the outbox is, for operators: a file path, or the URL (no password) and schema.
    location: str
    #: The exceptions this store raises when it cannot read or write (a locked or read-only
    #: file, a database that does not answer).
    errors: tuple[type[BaseException], ...]
    #: Whether owner ids naming a pid of this host may be checked for liveness: true for one
    #: file on one host, false for a database shared by hosts whose pid spaces differ.
    local: bool

    # --- accepting ----------------------------------------------------------------------------

    def enqueue(
        self,
        rows: Sequence[NewRow],
        now: float,
        *,
        hold: str | None = None,
        tags: Sequence[Tag] = (),
        origin: str = "",
        wait: float | None = None,
    ) -> int:
        """Store rows durably, skipping keys already present; returns how many were new.

        ``origin`` names the storing process (:meth:`pending` watches its rows); ``wait``
        bounds how long a lock or a connection is waited for (None: the store's default)."""
        ...

    def append(
        self,
        rows: Sequence[NewRow],
        now: float,
        *,
        tags: Sequence[Tag] = (),
        origin: str = "",
        wait: float | None = None,
    ) -> None:
        """Store rows durably, all or none, without saying which were new: what ``Bridge``
        calls for events that are not held. SQLite writes them to this process's journal
        (one ``write()``, no lock to wait for) and deduplicates when it ingests them;
        PostgreSQL inserts them. ``wait`` as for :meth:`enqueue`."""
        ...

    def ingest(self, *, own: bool = False, wait: float | None = None) -> int:
        """Move journaled rows into the outbox (every process's, or this one's with ``own``);
        returns how many were read (0 for a store without a journal). Dispatchers call it
        once per pass; the CLI before it reads. ``wait`` as for :meth:`enqueue`."""
        ...

    def defer_intake(self) -> None:
        """Reads in this thread do not ingest this process's journal first: it calls
        :meth:`ingest` itself (the dispatcher)."""
        ...

    def release(self, hold_key: str, now: float, origin: str = "") -> int: ...

    def forget(self, hold_key: str) -> int: ...

    def expire_held(self, created_before: float) -> int: ...

    def observe(self, observed: Sequence[Observation]) -> None: ...

    # --- delivering ---------------------------------------------------------------------------

    def prepare(self) -> int:
        """Make what was stored claimable and file the observations it carries; returns how
        many rows it moved (0 for a store where rows are claimable once committed)."""
        ...

    def take(self, *, owner: str, now: float, limit: int, lease: float, linger: float) -> Taken:
        """Lease up to ``limit`` of the oldest rows stored since the last take to ``owner``,
        as one claim, and file the observations new rows carry; a store whose rows are
        claimable once committed takes nothing (its dispatcher goes by :meth:`claim`).

        The fast path of a healthy stream: the rows are sent as they were stored, and only
        what fails is moved to the leases :meth:`claim` deals in (:meth:`adopt`). A partial
        batch younger than ``linger`` is left for later (``wake_at``)."""
        ...

    def adopt(self, claim: int, ids: Sequence[int], owner: str, until: float) -> list[Claimed]:
        """Turn rows of ``owner``'s ``claim`` into rows leased to it until ``until``, as
        :meth:`claim` leases them (for retries, bisection, dead letters); returns them, in id
        order (none if the claim expired meanwhile)."""
        ...

    def groups(self) -> list[tuple[str, str]]:
        """The (pixel_id, test_code) pairs with rows to send."""
        ...

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
    ) -> Claim: ...

    def renew(self, ids: Sequence[int], owner: str, until: float, claim: int | None = None) -> None:
        """Extend a lease (rows of ``claim``: the claim's) to ``until``."""
        ...

    def reclaim(self, host: str, is_alive: Callable[[int], bool]) -> int:
        """Free rows leased by dead processes of this host (local stores only)."""
        ...

    def delivered(
        self,
        ids: Sequence[int],
        pixel_id: str,
        owner: str,
        reply: GraphResult | None = None,
        now: float | None = None,
        claim: int | None = None,
    ) -> bool:
        """Mark rows delivered (rows of ``owner``'s ``claim`` when given); True when it
        lifted the pixel's pause."""
        ...

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
        """Pause the pixel and put the rows back; returns (consecutive failures, until)."""
        ...

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
    ) -> None: ...

    def mark(self) -> int:
        """The highest row id now: :meth:`pending` watches the rows up to it."""
        ...

    def pending(self, origin: str, up_to: int) -> bool:
        """Is a row ``origin`` stored (or released), with ``id <= up_to``, still unsettled?"""
        ...

    # --- housekeeping -------------------------------------------------------------------------

    def checkpoint(self) -> None: ...

    def forget_settled(self, before: float, limit: int = 5000) -> int: ...

    def prune(self, before: float, limit: int = 5000) -> int: ...

    # --- reading and repairing (operators, inspector, diagnostics) ----------------------------

    def stats(self, now: float) -> OutboxStats: ...

    def note_clock(self, reading: ClockSkew) -> None:
        """Keep the latest reading of this machine's clock against Meta's for ``stats()``."""
        ...

    def dead_letters(self, limit: int = 50) -> list[DeadLetter]: ...

    def retry_dead(self, ids: Sequence[int] | None, now: float) -> int: ...

    def purge(
        self, *, delivered: bool, dead: bool, older_than: float | None, now: float
    ) -> dict[str, int]: ...

    def recent(self, limit: int) -> list[Seen]: ...

    def outcomes(self, keys: Iterable[Key], now: float) -> dict[Key, Outcome]: ...

    def figures(self, since: float, until: float) -> Figures: ...

    def retry_preview(self, ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """(dead letters among ``ids``, those of them held for consent): what a retry leaves."""
        ...

    def kept_by_purge(
        self, *, delivered_older_than: float | None, dead_older_than: float | None, now: float
    ) -> Kept:
        """After a purge with these ages: what it kept, and why."""
        ...

    def record_drops(
        self,
        counts: Mapping[tuple[int, str, str, str], tuple[int, float]],
        *,
        before_hour: int,
        max_keys_per_hour: int,
        other: str,
    ) -> None:
        """Add counts of browser events the mirror did not store (see capi_bridge.drops)."""
        ...

    def drop_counts(self, since_hour: int, until_hour: int) -> list[DropRow]: ...

    def waiting(self, bound: int) -> tuple[int, int]:
        """(held, pending) rows, each counted up to ``bound`` (the endpoint's outbox caps)."""
        ...

    # --- lifecycle ----------------------------------------------------------------------------

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` when another process stores rows to send; returns a stop function
        (None when the store has no such signal and dispatchers poll)."""
        ...

    def close(self) -> None: ...
