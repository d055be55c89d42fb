"""The queue of one process's writers on the SQLite outbox (see :class:`WriteLock`)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator


class WriteLock:
    """The writers of one process take turns here before they ask SQLite for its lock.

    SQLite has no queue: a writer that finds the file locked gets SQLITE_BUSY and must poll
    (``_retry``), and a poll sleeps at least the kernel's timer slack, ~50-100 µs, several
    times the insert it waits to make. Between the threads of one process (the request
    threads and the dispatcher) this lock is that queue: a waiting writer is woken the moment
    the previous one commits. Other processes are still met, and waited for, in SQLite: this
    changes who waits how, never what is committed. Re-entrant, so a write inside a write
    (same thread, same connection) is still one transaction.
    """

    def __init__(self, busy_timeout: float = 10.0) -> None:
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self.release = self._lock.release

    def acquire(self, wait: float | None) -> None:
        """Wait up to ``wait`` (default ``busy_timeout``); a lock still held raises as SQLite's
        would, so callers treat both alike (``is_busy``)."""
        if not self._lock.acquire(timeout=self.busy_timeout if wait is None else wait):
            raise sqlite3.OperationalError("database is locked (by a writer of this process)")

    @contextlib.contextmanager
    def held(self, wait: float | None) -> Iterator[None]:
        self.acquire(wait)
        try:
            yield
        finally:
            self._lock.release()
