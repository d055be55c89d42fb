"""The SQLite store's intake: rows accepted into a journal, moved into the outbox in batches.

:meth:`SQLiteIntake.append` is what ``Bridge.enqueue`` and ``enqueue_many`` call for events that
are not held: one ``write()`` to this process's journal (:mod:`capi_bridge.delivery.journal`)
instead of a SQLite transaction, about 45 µs less per event here (``benchmarks/delivery.py``).
:meth:`SQLiteIntake.ingest` moves journaled rows into ``outbox`` with the same ``INSERT OR
IGNORE`` as ``enqueue``, in one transaction per pass that also moves each journal's read offset
(``meta`` key ``intake:<file>``), so a row is ingested exactly once whoever ingests, and however
often a process dies halfway. Every dispatcher ingests every journal on each pass (a dead
process's too); a ``capi-bridge worker`` does it for the app processes that only store.

Readers see their own writes: before a read or a write on this process's connection, rows this
process journaled are ingested first (:meth:`SQLiteIntake._catch_up`), so ``stats()``,
``flush()`` and the inspector count them at once. The dispatcher's thread opts out
(:meth:`defer_intake`): it ingests once per pass, so its batches stay whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from capi_bridge.delivery.journal import (
    READ_LIMIT,
    Journal,
    frame,
    journals,
    open_journal,
    parse,
    read_from,
    writer_of,
)
from capi_bridge.delivery.sqlite_schema import COUNT_DEDUP, INSERT_JSON_SQL, INSERT_SPLIT_SQL
from capi_bridge.delivery.store import NewRow
from capi_bridge.observations import Observation, Tag

logger = logging.getLogger("capi_bridge.outbox")

_NO_TAG: Tag = (None, None, None, None, None, None, None)  # type: ignore[assignment]
_KEY = "intake:"
#: A journal row: the insert's parameters (see ``sqlite_schema.insert_sql``, observed) but the
#: payload: pixel_id, event_name, event_id, test_code, expires, created, due, origin, tag...,
#: then the payload's length (a row of the first format has its payload where origin is).
_CREATED, _TAG, _OLD_TAG = 5, 8, 9
#: A journal row's bytes besides its payload's characters (and their UTF-8), generously.
_ROW_OVERHEAD = 256
#: How long a read waits to ingest this process's own journaled rows before it reads anyway.
CATCH_UP_WAIT = 1.0
_OFFSETS = "SELECT key, value FROM meta WHERE key >= ? AND key < ?"  # the 'intake:' keys


class SQLiteIntake:
    """Mixed into :class:`~capi_bridge.delivery.sqlite_store.SQLiteStore`."""

    _turn = 0  # which writer's journals the next pass reads first (see in_turn)

    if TYPE_CHECKING:
        path: str
        journal: Journal
        journal_limit: int
        _local: threading.local

        def _write_now(
            self, wait: float | None = None
        ) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...
        enqueue: Callable[..., int]  # the store's (see Store.enqueue)
        def observe(self, observations: Sequence[Observation]) -> None: ...
        def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def append(
        self,
        rows: Sequence[NewRow],
        now: float,
        *,
        tags: Sequence[Tag] = (),
        origin: str = "",
        wait: float | None = None,
    ) -> None:
        """Store ``rows`` durably (on return, as a commit is), not knowing yet which are new:
        duplicates are found when they are ingested. All or none: one record."""
        if tags and len(tags) != len(rows):
            raise ValueError(f"{len(tags)} tags for {len(rows)} rows: one tag per row")
        if not rows:
            return
        # Without JSON functions this SQLite could not ingest a journal; a bulk import past
        # the limit (see journal.MAX_RECORD) is one transaction anyway. Both go to SQLite at
        # once. The size is estimated before encoding, so that no record is made for nothing.
        estimate = sum(len(r[5]) for r in rows) + _ROW_OVERHEAD * len(rows)
        if not JSON_FUNCTIONS or estimate > self.journal_limit:
            self.enqueue(rows, now, tags=tags, origin=origin, wait=wait)
            return
        marks = tags or [_NO_TAG] * len(rows)
        texts = [r[5].encode() for r in rows]
        record = frame(
            [
                (*r[:5], now, now, origin, *mark, len(text))
                for r, mark, text in zip(rows, marks, texts, strict=True)
            ],
            texts,
        )
        if len(record) > self.journal_limit:  # UTF-8 made it grow past the limit
            self.enqueue(rows, now, tags=tags, origin=origin, wait=wait)
        else:
            self.journal.append(record)

    def defer_intake(self) -> None:
        """This thread reads without ingesting this process's journal first: it calls
        :meth:`ingest` itself, once per pass (the dispatcher)."""
        self._local.deferred = True

    def _catch_up(self) -> None:
        """Ingest this process's journaled rows if some are not in the outbox yet: best
        effort, within :data:`CATCH_UP_WAIT` (a locked outbox can still be read; what
        cannot be ingested now stays journaled, and ``flush`` ingests before it counts)."""
        journal = self.journal
        if journal.appended != journal.ingested and not getattr(self._local, "deferred", False):
            self.ingest_quietly(own=True)

    def ingest_quietly(self, *, own: bool = False) -> None:
        """:meth:`ingest` for a reader, within :data:`CATCH_UP_WAIT`; what cannot be ingested
        now stays journaled (a DEBUG line says why)."""
        try:
            self.ingest(own=own, wait=CATCH_UP_WAIT)
        except (sqlite3.Error, OSError) as exc:
            logger.debug("capi-bridge: journaled rows not ingested yet: %s", exc)

    def ingest(self, *, own: bool = False, wait: float | None = None) -> int:
        """Move journaled rows into the outbox (only this process's with ``own``); returns
        how many rows were read. Sealed journals read to their end are deleted. ``wait``
        bounds the wait for the write lock (None: the store's default)."""
        journal = self.journal
        seen = journal.appended  # everything appended until now is in the files we list
        names = journals(journal.directory, journal.prefix if own else "")
        if not names:
            journal.ingested = seen
            return 0
        previous = getattr(self._local, "deferred", False)
        self._local.deferred = True  # our own reads below must not ingest again
        try:
            return self._ingest(names, seen, wait)
        finally:
            self._local.deferred = previous

    def _ingest(self, names: list[str], seen: int, wait: float | None) -> int:
        journal = self.journal
        known = journal.known
        opened = {}
        self._turn += 1
        try:
            for name in in_turn(names, self._turn):
                handle = open_journal(os.path.join(journal.directory, name))
                if handle is not None:
                    opened[name] = handle
            if not any(h.sealed or h.size > known.get(n, -1) for n, h in opened.items()):
                journal.ingested = seen  # nothing new: no transaction (a worker polls often)
                return 0
            done: list[str] = []
            reached: dict[str, int] = {}  # known once committed
            with self._write_now(wait) as c:
                offsets = dict(c.execute(_OFFSETS, (_KEY, _KEY[:-1] + ";")))
                heads: list[bytes] = []
                payloads: list[bytes] = []
                old: list[bytes] = []
                count, complete = 0, True
                budget = READ_LIMIT  # for all files: bounded memory however far behind
                for name, handle in opened.items():
                    offset = int(offsets.get(_KEY + name, 0))
                    if budget <= 0:  # the rest waits for the next pass
                        complete = False
                        continue
                    data = read_from(handle, offset, budget)
                    budget -= len(data)
                    whole = offset + len(data) == handle.size  # not cut at the budget
                    complete = complete and whole
                    parsed = parse(data)
                    heads += parsed.rows
                    payloads += parsed.payloads
                    old += parsed.old
                    count += parsed.total
                    end = offset + parsed.used
                    if handle.sealed and (parsed.corrupt or (whole and parsed.used < len(data))):
                        logger.warning(
                            "capi-bridge: dropped %d bytes at the end of %s: a record its process"
                            " was writing when it died (its enqueue never returned)",
                            handle.size - end,
                            name,
                        )
                        end = handle.size
                    if end != offset:
                        c.execute(
                            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (_KEY + name, f"{end}")
                        )
                    reached[name] = end
                    if handle.sealed and end >= handle.size:
                        done.append(name)
                joined = _joined(heads)
                added = _insert(c, joined, b"".join(payloads)) if heads else 0
                joined_old = _joined(old)  # journals an earlier version wrote
                added += _insert(c, joined_old) if old else 0
                if added < count:
                    c.execute(COUNT_DEDUP, (count - added,))
            if complete:  # else a read stopped at READ_LIMIT: the next pass comes back for more
                journal.ingested = seen
            known.update(reached)
            for name in done:  # after the commit: its rows are in the outbox now
                known.pop(name, None)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(journal.directory, name))
            self._forget_offsets(offsets, names, done)
        finally:
            for handle in opened.values():
                os.close(handle.fd)
        if added < count:  # the copy that arrived second: what the inspector is there to show
            rows = [(r, _TAG, -1) for r in json.loads(joined)]
            rows += [(r, _OLD_TAG, len(r)) for r in json.loads(joined_old)]
            self._observe_duplicates(
                (*row[:3], row[_CREATED], tuple(row[tag:end]))
                for row, tag, end in rows
                if row[tag] is not None
            )
        return count

    def _forget_offsets(
        self, offsets: dict[str, str], listed: list[str], deleted: list[str]
    ) -> None:
        """Drop the offsets of the journals just ``deleted`` and of any other that is gone
        (a name is never reused, so a gone file never comes back)."""
        directory, keep = self.journal.directory, set(listed) - set(deleted)
        gone = [
            key
            for key in offsets.keys() | {_KEY + name for name in deleted}
            if key[len(_KEY) :] not in keep
            and not os.path.exists(os.path.join(directory, key[len(_KEY) :]))
        ]
        if gone:
            with self._write_now() as c:
                c.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in gone])

    def _observe_duplicates(self, candidates: Iterable[tuple[str, str, str, float, Tag]]) -> None:
        """File the tags of rows (key, created, tag) that found an older row under their key
        (it was not stored at ``created``): the copy that arrived second. Rare, so done here
        and now."""
        found = []
        for pixel_id, name, event_id, created, tag in candidates:
            older = self.query(
                "SELECT created FROM outbox WHERE pixel_id = ? AND event_name = ? AND event_id = ?",
                (pixel_id, name, event_id),
            )
            if older != [(created,)]:
                found.append(Observation(created, pixel_id, name, event_id, *tag))
        self.observe(found)


def _joined(arrays: list[bytes]) -> str:
    """JSON arrays (of rows) as one."""
    return "[" + ",".join(a[1:-1].decode() for a in arrays) + "]"


def _insert(c: sqlite3.Connection, joined: str, payloads: bytes | None = None) -> int:
    """``INSERT OR IGNORE`` the journal rows of the JSON array ``joined`` (their ``payloads``
    apart, or inside the rows in the first format); returns how many were new.

    SQLite reads the JSON itself (``json_each``), inside one statement that runs without the
    GIL: the request threads go on meanwhile."""
    if payloads is None:
        return int(c.execute(INSERT_JSON_SQL, (joined,)).rowcount)
    return int(c.execute(INSERT_SPLIT_SQL, (joined, payloads)).rowcount)


def _has_json_functions() -> bool:
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        try:
            probe.execute(
                "SELECT sum(json_extract(value, '$[0]')) OVER (ORDER BY key)"
                " FROM json_each('[[1]]')"
            )
        except sqlite3.OperationalError:
            return False
    return True


#: Whether this SQLite has its JSON functions (built in since 3.38, and in most builds
#: before) and window functions (3.25): without them, events are stored directly, with no
#: journal.
JSON_FUNCTIONS = _has_json_functions()


def in_turn(names: list[str], turn: int) -> list[str]:
    """Journal ``names`` (sorted: each writer's files oldest first) with the writers taken in
    turn from the ``turn``-th: a pass reads at most ``READ_LIMIT``, so a process that writes
    faster than ingestion must not hold another's rows back for as long as it goes on."""
    writers = sorted({writer_of(name) for name in names})
    if len(writers) < 2:
        return names
    first = turn % len(writers)
    place = {writer: (i - first) % len(writers) for i, writer in enumerate(writers)}
    return sorted(names, key=lambda name: (place[writer_of(name)], name))
