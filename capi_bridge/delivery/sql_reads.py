"""The SQL both stores share: reading observations, outcomes, dead letters and diagnostics.

These statements are written once in the SQL that SQLite and PostgreSQL both speak (``?``
placeholders, which the PostgreSQL store turns into ``%s``; no boolean arithmetic), on the same
table layout. Observations are appended in time order, so their ids stand in for a time index:
a window starts at the first id whose ``at`` is recent enough, found by bisecting ids (a few
indexed look-ups) instead of maintaining an index on ``at`` that every enqueue would pay for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capi_bridge.clock import ClockSkew
from capi_bridge.delivery.records import (
    DeadLetter,
    DropRow,
    Figures,
    Kept,
    LastError,
    Outcome,
    Seen,
)
from capi_bridge.delivery.store import Key, State
from capi_bridge.observations import BROWSER, KEYS, NOTE, SERVER, TWIN, Observation

#: Columns of an observation row as read back: its id, then the stored fields.
COLUMNS = (
    "id, at, pixel_id, event_name, event_id, channel, pixel_loaded, twin, keys, fbp_hash,"
    " fbc_age, preview, problem"
)
OBSERVE_SQL = (
    "INSERT INTO observations (at, pixel_id, event_name, event_id, channel, pixel_loaded, twin,"
    " keys, fbp_hash, fbc_age, preview, problem) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The ``obs_*`` columns an event's observation rides in while its row is fresh or held.
OBSERVED_COLUMNS = "obs_channel, obs_loaded, obs_twin, obs_keys, obs_fbp, obs_fbc_age, obs_preview"
#: Files the observations outbox rows carry, for rows matching a condition appended to it
#: (its ``?`` parameters follow the first one: the time to file them at, NULL for ``created``).
FILE_OBSERVED_SQL = (
    "INSERT INTO observations (at, pixel_id, event_name, event_id, channel, pixel_loaded, twin,"
    " keys, fbp_hash, fbc_age, preview) SELECT coalesce(?, created), pixel_id, event_name,"
    f" event_id, {OBSERVED_COLUMNS} FROM outbox WHERE obs_channel IS NOT NULL AND "
)
#: A SET clause clearing a filed observation from its outbox row.
CLEAR_OBSERVED = ", ".join(f"{column} = NULL" for column in OBSERVED_COLUMNS.split(", "))
_STATES = {
    State.PENDING: "pending",
    State.DELIVERED: "delivered",
    State.DEAD: "dead",
    State.FRESH: "pending",
    State.HELD: "held",
}
_SERVER_SIDE = f"(channel = {SERVER} OR (channel = {BROWSER} AND problem IS NULL))"


class SqlReads:
    """Mixed into both stores; they provide :meth:`query` and :meth:`write`."""

    location: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def write(self, wait: float | None = None) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    # --- observations -------------------------------------------------------------------------

    def observe(self, observed: Sequence[Observation]) -> None:
        """File observations of events that are not enqueued here (pixel twins, events the
        mirror refused)."""
        if observed:
            with self.write() as tx:
                tx.executemany(OBSERVE_SQL, observed)

    def first_id_since(self, since: float) -> int:
        """A bound such that observations with ``id >= bound`` are those recorded at or after
        ``since`` (ids follow time; several processes may interleave a few milliseconds)."""
        bounds = self.query("SELECT coalesce(min(id), 1), coalesce(max(id), 0) FROM observations")
        low, high = int(bounds[0][0]), int(bounds[0][1]) + 1
        while low < high:
            mid = (low + high) // 2  # <= max(id): some row has an id >= mid
            row_id, at = self.query(
                "SELECT id, at FROM observations WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
            )[0]
            if at < since:
                low = int(row_id) + 1
            else:
                high = mid  # no row has an id in [mid, row_id)
        return low

    def delete_in_chunks(self, sql: str, params: Sequence[Any], limit: int) -> int:
        """Run a DELETE whose last parameter is its ``LIMIT``, one short transaction per
        chunk, until a chunk comes up short: enqueues never wait long behind a big purge."""
        removed = 0
        while True:
            with self.write() as tx:
                n = int(tx.execute(sql, (*params, limit)).rowcount)
            removed += n
            if n < limit:
                return removed

    def prune(self, before: float, limit: int = 5000) -> int:
        """Delete observations recorded before ``before``, and deliveries as old, in short
        transactions; returns how many observations."""
        removed = self.delete_in_chunks(
            "DELETE FROM observations WHERE id IN"
            " (SELECT id FROM observations WHERE id < ? ORDER BY id LIMIT ?)",
            (self.first_id_since(before),),
            limit,
        )
        with self.write() as tx:
            tx.execute("DELETE FROM deliveries WHERE at < ?", (before,))
        return removed

    def recent(self, limit: int) -> list[Seen]:
        """The newest ``limit`` observations, newest first."""
        rows = self.query(f"SELECT {COLUMNS} FROM observations ORDER BY id DESC LIMIT ?", (limit,))
        return [Seen.from_row(r) for r in rows]

    # --- outcomes and dead letters ------------------------------------------------------------

    def last_error(self) -> LastError | None:
        """Meta's most recent error, as ``stats()`` reports it."""
        last = self.query("SELECT value FROM meta WHERE key = 'last_error'")
        return LastError.decode(last[0][0] if last else None)

    def note_clock(self, reading: ClockSkew) -> None:
        """Keep the latest clock reading (:mod:`capi_bridge.clock`) of any process, for
        ``stats()`` everywhere (``capi-bridge outbox stats`` runs in a process of its own)."""
        with self.write() as tx:
            tx.execute(
                "INSERT INTO meta VALUES ('clock_skew', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (reading.encode(),),
            )

    def clock_skew(self) -> ClockSkew | None:
        """The latest clock reading a dispatcher noted, if any."""
        row = self.query("SELECT value FROM meta WHERE key = 'clock_skew'")
        return ClockSkew.decode(row[0][0] if row else None)

    def outcomes(self, keys: Iterable[Key], now: float) -> dict[Key, Outcome]:
        """The delivery state of each (pixel, event_name, event_id): a look-up on the outbox's
        unique key each, plus the batch reply or dead letter that settled it."""
        found: dict[Key, Outcome] = {}
        last_errors: list[LastError | None] = []
        for key in keys:
            if key in found:
                continue
            row = self.query(
                "SELECT state, attempts, lease_until, delivery FROM outbox"
                " WHERE pixel_id = ? AND event_name = ? AND event_id = ?",
                key,
            )
            if not row:
                found[key] = Outcome("settled")  # past the dedup window, or purged
                continue
            state, attempts, lease_until, delivery = row[0]
            name = _STATES.get(State(state), "pending")
            if name == "pending" and lease_until is not None and lease_until > now:
                name = "in flight"
            elif name == "pending" and attempts:
                name = "retrying"
                if not last_errors:  # read once per call, only if some row is retrying
                    last_errors.append(self.last_error())
                last = last_errors[0]
                if last is not None and last.pixel_id == key[0]:
                    found[key] = Outcome(
                        name, last.fbtrace_id, message=last.message, code=last.code,
                        subcode=last.subcode,
                    )  # fmt: skip
                    continue
            found[key] = self._settled(key, name, delivery)
        return found

    def _settled(self, key: Key, name: str, delivery: int | None) -> Outcome:
        if name == "delivered" and delivery is not None:
            reply = self.query(
                "SELECT fbtrace_id, events_received, events FROM deliveries WHERE id = ?",
                (delivery,),
            )
            if reply:
                return Outcome(name, reply[0][0], reply[0][1], reply[0][2])
        if name == "dead":
            letter = self.query(
                "SELECT reason, message, code, subcode, fbtrace_id FROM dead_letters"
                " WHERE pixel_id = ? AND event_name = ? AND event_id = ? ORDER BY id DESC LIMIT 1",
                key,
            )
            if letter:
                reason, message, code, subcode, trace = letter[0]
                return Outcome(
                    name, trace, message=f"{reason}: {message or '-'}", code=code, subcode=subcode
                )
        return Outcome(name)

    def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        """The most recent dead letters first."""
        rows = self.query(
            "SELECT id, pixel_id, event_name, event_id, test_code, failed_at, reason, message,"
            " code, subcode, fbtrace_id FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            DeadLetter(r[0], r[1], r[2], r[3], r[4] or None, r[5], r[6], r[7], r[8], r[9], r[10])
            for r in rows
        ]

    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self.query("SELECT name, value FROM counters")}

    # --- diagnostics --------------------------------------------------------------------------

    def figures(self, since: float, until: float) -> Figures:
        """The diagnostics' aggregates over ``[since, until]``: a few grouped queries over the
        observations of the window (and the dead letters settled in it)."""
        start = self.first_id_since(since)
        window = (start, since, until)
        totals = self.query(
            f"WITH ev AS ({_PER_EVENT}) SELECT event_name, count(*), sum(server), sum(browser),"
            " sum(browser * server), sum(server * (1 - browser)), count(loaded),"
            f" coalesce(sum(loaded), 0), {_SHARES} FROM ev GROUP BY event_name"
            " ORDER BY event_name",
            window,
        )
        ages = self.query(
            f"WITH ev AS ({_PER_EVENT}) SELECT event_name, fbc_age FROM ev"
            " WHERE server = 1 AND fbc_age IS NOT NULL",
            window,
        )
        refused = self.query(
            f"WITH ev AS ({_PER_EVENT}) SELECT event_name, problem, count(*) FROM ev"
            " WHERE problem IS NOT NULL AND server = 0 GROUP BY event_name, problem",
            window,
        )
        dead = self.query(
            "SELECT event_name, reason, message, code, subcode, count(DISTINCT event_id)"
            " FROM dead_letters WHERE failed_at >= ? AND failed_at <= ?"
            " GROUP BY event_name, reason, message, code, subcode",
            (since, until),
        )
        dropped = self.query(
            "SELECT event_name, problem, count(DISTINCT event_id) FROM observations"
            f" WHERE channel = {NOTE} AND id >= ? AND at >= ? AND at <= ?"
            " GROUP BY event_name, problem",
            window,
        )
        return Figures(
            [tuple(int(v) if i else v for i, v in enumerate(row)) for row in totals],
            [(name, int(age)) for name, age in ages],
            [(name, problem, int(count)) for name, problem, count in refused],
            [(*row[:5], int(row[5])) for row in dead],
            [(name, problem, int(count)) for name, problem, count in dropped],
        )

    # --- operators: what a retry or a purge would leave, and why --------------------------------

    def retry_preview(self, ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Which of ``ids`` (every one when None) are dead letters, and which of those
        :meth:`retry_dead` will not requeue because an event with the same key is held for
        consent: the CLI says so instead of counting them silently out."""
        rows = self.query(
            "SELECT d.id, CASE WHEN EXISTS (SELECT 1 FROM outbox o WHERE o.pixel_id = d.pixel_id"
            " AND o.event_name = d.event_name AND o.event_id = d.event_id AND o.state = ?)"
            " THEN 1 ELSE 0 END FROM dead_letters d ORDER BY d.id",
            (State.HELD.value,),
        )
        wanted = None if ids is None else set(ids)
        found = [(int(i), bool(held)) for i, held in rows if wanted is None or i in wanted]
        return [i for i, _ in found], [i for i, held in found if held]

    def kept_by_purge(
        self, *, delivered_older_than: float | None, dead_older_than: float | None, now: float
    ) -> Kept:
        """Count, after :meth:`purge` ran with these ages, what it kept and why."""
        cutoff = purge_cutoff(delivered_older_than, now)
        young, newest = self.query(
            "SELECT coalesce(sum(CASE WHEN created >= ? THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN created < ? THEN 1 ELSE 0 END), 0)"
            " FROM outbox WHERE state = ?",
            (cutoff, cutoff, State.DELIVERED.value),
        )[0]
        dead = self.query(
            "SELECT count(*) FROM dead_letters WHERE failed_at >= ?",
            (purge_cutoff(dead_older_than, now),),
        )[0][0]
        return Kept(delivered_young=int(young), delivered_newest=int(newest), dead_young=int(dead))

    # --- the endpoint's caps on held and pending rows (capi_bridge.admission) -----------------

    def waiting(self, bound: int) -> tuple[int, int]:
        """(held, pending) rows, each counted up to ``bound``: enough to compare with a cap,
        and cheap however large the outbox (read from the partial indexes of held and unsettled
        rows, never past ``bound`` entries)."""
        held, pending = (
            int(
                self.query(
                    f"SELECT count(*) FROM (SELECT 1 FROM outbox WHERE state = {state:d}"
                    " LIMIT ?) AS w",
                    (bound,),
                )[0][0]
            )
            for state in (State.HELD, State.PENDING)
        )
        return held, min(bound, pending + self.fresh_rows(bound))

    def fresh_rows(self, bound: int) -> int:
        """Rows stored but not yet claimable, up to ``bound`` (SQLite's fresh rows; none in a
        store whose rows are claimable once committed)."""
        return 0

    # --- browser events the mirror did not store (counts, see capi_bridge.drops) ---------------

    def record_drops(
        self,
        counts: Mapping[tuple[int, str, str, str], tuple[int, float]],
        *,
        before_hour: int,
        max_keys_per_hour: int,
        other: str,
    ) -> None:
        """Add ``counts`` ((hour, event_name, reason, detail) -> (count, last_at)) to the
        ``dropped`` table in one transaction, and forget hours before ``before_hour``. An hour
        holds at most ``max_keys_per_hour`` keys: past that, counts fold into (``other``,
        reason, ""), so whatever anonymous visitors post, the table stays small."""
        with self.write() as tx:
            tx.execute("DELETE FROM dropped WHERE hour < ?", (before_hour,))
            known: dict[int, set[tuple[str, str, str]]] = {}
            for (hour, name, reason, detail), (count, at) in counts.items():
                keys = known.get(hour)
                if keys is None:
                    rows = tx.execute(
                        "SELECT event_name, reason, detail FROM dropped WHERE hour = ?", (hour,)
                    ).fetchall()
                    keys = known[hour] = {(str(n), str(r), str(d)) for n, r, d in rows}
                if (name, reason, detail) not in keys and len(keys) >= max_keys_per_hour:
                    name, detail = other, ""
                keys.add((name, reason, detail))
                tx.execute(
                    "INSERT INTO dropped VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT"
                    " (hour, event_name, reason, detail) DO UPDATE SET"
                    " count = dropped.count + excluded.count, last_at = CASE WHEN"
                    " excluded.last_at > dropped.last_at THEN excluded.last_at"
                    " ELSE dropped.last_at END",
                    (hour, name, reason, detail, int(count), at),
                )

    def drop_counts(self, since_hour: int, until_hour: int) -> list[DropRow]:
        """The counts of the hours ``since_hour..until_hour``, most frequent first."""
        rows = self.query(
            "SELECT event_name, reason, detail, sum(count), max(last_at) FROM dropped"
            " WHERE hour >= ? AND hour <= ? GROUP BY event_name, reason, detail"
            " ORDER BY sum(count) DESC, event_name, reason, detail",
            (since_hour, until_hour),
        )
        return [(str(n), str(r), str(d), int(c), float(t)) for n, r, d, c, t in rows]


def purge_cutoff(older_than: float | None, now: float) -> float:
    """Rows created before this are purged (all of them without ``older_than``)."""
    return now - older_than if older_than is not None else now + 1


def _flag(condition: str) -> str:
    """A 0/1 integer for ``condition`` (PostgreSQL has no arithmetic on booleans)."""
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


_BITS = [(label, bit) for bit, label, _ in KEYS]
_PER_EVENT = (
    "SELECT event_name, event_id,"
    f" max({_flag(f'channel IN ({BROWSER}, {TWIN})')}) AS browser,"
    f" max({_flag(_SERVER_SIDE)}) AS server,"
    f" max(CASE WHEN channel = {BROWSER} THEN pixel_loaded END) AS loaded,"
    f" min(CASE WHEN {_SERVER_SIDE} THEN fbc_age END) AS fbc_age,"
    f" max(CASE WHEN channel = {BROWSER} THEN problem END) AS problem, "
    + ", ".join(
        f"max(CASE WHEN {_SERVER_SIDE} AND (keys & {bit}) != 0 THEN 1 ELSE 0 END) AS k_{label}"
        for label, bit in _BITS
    )
    + " FROM observations WHERE id >= ? AND at >= ? AND at <= ? GROUP BY event_name, event_id"
)
_SHARES = ", ".join(f"coalesce(sum(k_{label}), 0)" for label, _ in _BITS)
