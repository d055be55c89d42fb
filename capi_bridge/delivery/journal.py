"""Each process's append-only journal of accepted rows, beside the SQLite outbox.

Why: a durable SQLite commit is about ten system calls (the WAL's read-mark and write locks,
then two writes per page for the table's page and the key's page, and the header page when the
file grows); on a virtual machine, where a system call costs microseconds, that was 55 of the
80 µs of an ``enqueue``. Appending one framed record to a file that only this process writes is
one ``write()``. Both leave the bytes in the operating system's page cache before the call
returns, which is exactly what the outbox promises with ``synchronous=NORMAL``: a crashed or
killed app loses nothing, a crashed kernel may lose the last moments. With ``FULL`` each append
is followed by ``fdatasync``, as each commit is. The journal lives in ``<outbox>-intake/`` on the
same disk as the outbox, so it adds no new way to lose an event.

Dispatchers move journaled rows into the outbox in batches
(:class:`capi_bridge.delivery.sqlite_intake.SQLiteIntake`), where the UNIQUE key deduplicates
them as it does any insert; a process always sees its own rows there before it reads.

Files and their life:

* ``<pid>-<random>-<seq>.log``, mode 0600, in a 0700 directory; created under a ``.tmp`` name,
  locked (``flock`` shared) by its writer, then renamed, so no reader ever sees a file whose
  writer has not locked it yet.
* A writer starts a new file past :data:`ROTATE` bytes and closes the old one. A file nobody
  holds locked (its writer moved on, closed, or died) is *sealed*: it will not grow, and once
  ingested to its end it is deleted.
* A record is ``MAGIC, json length, payloads length, crc32, rows`` (five little-endian
  uint32), then a JSON array of rows, each the insert's parameters but the payload, followed by
  the payload's length in bytes, then the payloads' UTF-8 bytes back to back. Ingestion cuts
  each payload out of those bytes (``substr``) instead of unescaping it from a JSON string:
  SQLite copied a row's whole text once per column it read, payload included, and a
  million-event backlog spent most of its ingestion doing that. A record written before this
  format (``length, crc32, rows``, then rows with their payload inside) is still read: its
  first word, a length, is always below ``MAGIC``. A crash in the middle of a
  ``write()`` leaves a torn record at the end of a sealed file: its ``enqueue`` never
  returned, so it was never accepted, and ingestion drops it. A short write (disk full) seals
  the file at once and raises, so torn bytes never sit in front of later records.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from capi_bridge.delivery.processes import current_pid
from capi_bridge.json_encoding import encode_own_json

#: A writer moves to a new file past this many bytes, so ingested ones can be deleted.
ROTATE = 4 << 20
#: A record holds at most this much; a bigger ``enqueue_many`` is written to SQLite directly.
#: Where the dispatcher is a thread of the same process, a bulk import of 1000 events (1.3 MB)
#: goes directly: the thread gets the GIL back only every few ms while the app's thread runs
#: Python, so journaled rows wait to be ingested until the import is over (end to end, 50,000
#: events: 18,500-20,600 a second journaled, 21,400-22,300 inserted at once). Where a worker
#: process delivers, the app only journals, up to :data:`MAX_BULK_RECORD`
#: (``benchmarks/delivery.py``: ``enqueue_many`` 4.3x the SDK's best).
MAX_RECORD = 1 << 20
MAX_BULK_RECORD = 8 << 20
#: Ingestion reads at most this much per transaction, all files together: more than the
#: largest record, so every pass makes progress, and no more, because a pass holds a few
#: copies of what it read. Per file, a delivery process behind a fast bulk import read every
#: waiting file at once (Python's heap at 450 MB); with 16 MB for all files it peaked at
#: 123 MB RSS, with 9 MB at 86 MB (``benchmarks/delivery.py``'s million-event backlog).
READ_LIMIT = 9 << 20
SUFFIX = ".log"
_SEQ_DIGITS = 6  # a journal file's sequence number, after its writer's prefix

_HEAD = struct.Struct("<III")  # the first format: body length, crc32(body), rows in the body
_SPLIT = struct.Struct("<IIIII")  # MAGIC, rows' JSON length, payloads' length, crc32, rows
#: The first word of a record whose payloads follow its rows' JSON (above any body length).
MAGIC = 0xCB5B0002


def frame(rows: Sequence[Sequence[Any]], payloads: Sequence[bytes]) -> bytes:
    """One record holding ``rows`` (strings, numbers and None: each row's parameters but its
    payload, then the payload's length in bytes) and their ``payloads`` (UTF-8 JSON texts,
    one per row, in order). Built with one copy of the payloads."""
    head = encode_own_json(rows)
    crc = zlib.crc32(head)
    for payload in payloads:
        crc = zlib.crc32(payload, crc)
    size = sum(map(len, payloads))
    return b"".join((_SPLIT.pack(MAGIC, len(head), size, crc, len(rows)), head, *payloads))


class Parsed(NamedTuple):
    rows: list[bytes]  # each record's JSON array of rows (each row ends with its payload's size)
    payloads: list[bytes]  # each record's payloads, back to back, in the same order
    old: list[bytes]  # records of the first format: JSON arrays of whole rows
    total: int  # how many rows they hold in all
    used: int  # bytes of complete, intact records from the start of ``data``
    corrupt: bool  # a complete record failed its checksum (a torn write, seen in full)


def parse(data: bytes) -> Parsed:
    """The records at the start of ``data`` that are complete and intact."""
    rows: list[bytes] = []
    payloads: list[bytes] = []
    old: list[bytes] = []
    count = at = 0
    end = len(data)
    while at + _HEAD.size <= end:
        (first,) = struct.unpack_from("<I", data, at)
        if first == MAGIC:
            if at + _SPLIT.size > end:
                break
            _, size, rest, crc, n = _SPLIT.unpack_from(data, at)
            start = at + _SPLIT.size
        else:
            size, crc, n = _HEAD.unpack_from(data, at)
            rest, start = 0, at + _HEAD.size
        if start + size + rest > end:
            break  # cut short: its writer is still at it, or died in the middle of it
        body = data[start : start + size + rest]
        if zlib.crc32(body) != crc:
            return Parsed(rows, payloads, old, count, at, True)
        if first == MAGIC:
            rows.append(body[:size])
            payloads.append(body[size:])
        else:
            old.append(body)
        count += n
        at = start + size + rest
    return Parsed(rows, payloads, old, count, at, False)


def _gil_keeping_write() -> Callable[[int, bytes], int]:
    """``os.write``, minus letting go of the GIL: libc's ``write`` called through
    ``ctypes.PyDLL``, which keeps it. An append is one short write to the page cache; let go
    of the GIL for it, and the dispatcher thread takes it and the request thread waits for
    it to come back, once per event. ``os.write`` where ctypes cannot do this."""
    try:
        import ctypes

        libc_write = ctypes.PyDLL(None, use_errno=True).write
        libc_write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        libc_write.restype = ctypes.c_ssize_t
    except (ImportError, OSError, AttributeError):  # pragma: no cover - no ctypes, no libc
        return os.write

    def write(fd: int, data: bytes) -> int:
        while True:
            written = int(libc_write(fd, data, len(data)))
            if written >= 0:
                return written
            code = ctypes.get_errno()
            if code != errno.EINTR:  # retried, as os.write does (PEP 475)
                raise OSError(code, os.strerror(code))

    return write


_write = _gil_keeping_write()


class Journal:
    """This process's writer. Thread-safe; a forked child starts its own file."""

    def __init__(self, directory: str, *, sync: bool = False) -> None:
        self.directory = directory
        self.sync = sync
        #: Records this process has appended (the store compares it with what it ingested).
        self.appended = 0
        #: ``appended`` as it was when an ingestion of this process's journal last began.
        self.ingested = 0
        #: How far this process has seen each journal ingested (by anyone): a file that has
        #: not grown past it needs no transaction. A stale value only costs one.
        self.known: dict[str, int] = {}
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._pid = os.getpid()
        self.prefix = self._new_prefix()

    def _new_prefix(self) -> str:
        return f"{self._pid}-{uuid.uuid4().hex[:12]}-"

    def append(self, record: bytes) -> None:
        """Write one framed record (see :func:`frame`); durable as a commit is on return."""
        with self._lock:
            if self._pid != current_pid():  # a child the store did not tell (see forked)
                self._after_fork()
            if self._fd < 0 or self._size >= ROTATE:
                self._open_next()
            written = _write(self._fd, record)
            if written != len(record):  # the disk filled up mid-record: seal the torn file
                self._close()
                raise OSError(errno.ENOSPC, f"outbox intake {self.directory}: disk full")
            if self.sync:
                os.fdatasync(self._fd)
            self._size += written
            self.appended += 1

    def close(self) -> None:
        """Seal the current file (the next append starts another)."""
        with self._lock:
            if self._pid == current_pid():
                self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # releases the flock: the file is sealed

    def forked(self) -> None:
        """In a forked child, at once: let go of the parent's file, whose lock must end with
        the parent (a child holding it would keep the parent's old files from being sealed)."""
        self._lock = threading.Lock()
        self._after_fork()

    def _after_fork(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._size, self._seq = -1, 0, 0
        self._pid = os.getpid()
        self.prefix = self._new_prefix()
        self.appended = self.ingested = 0

    def _open_next(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._seq += 1
        name = os.path.join(self.directory, f"{self.prefix}{self._seq:0{_SEQ_DIGITS}d}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(name + ".tmp", flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(name + ".tmp", name + SUFFIX)
        except BaseException:
            os.close(fd)
            raise
        self._close()
        self._fd, self._size = fd, 0


def writer_of(name: str) -> str:
    """The prefix naming the process that wrote the journal file ``name`` (its files differ
    in their sequence number only)."""
    return name[: -(_SEQ_DIGITS + len(SUFFIX))]


def journals(directory: str, prefix: str = "") -> list[str]:
    """The names of the journal files in ``directory`` (those starting with ``prefix``), oldest
    of each writer first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(SUFFIX) and n.startswith(prefix))


class Opened(NamedTuple):
    fd: int
    sealed: bool  # no writer holds it: it will not grow, and can go once ingested
    size: int


def open_journal(path: str) -> Opened | None:
    """Open ``path`` for ingestion; a sealed file stays locked (exclusive) until closed, so two
    ingesters never both delete it. None if it is gone (another ingester deleted it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sealed = True
    except BlockingIOError:
        sealed = False
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, sealed, os.fstat(fd).st_size)


def read_from(opened: Opened, offset: int, limit: int = READ_LIMIT) -> bytes:
    """Up to ``limit`` bytes of an opened journal from ``offset``."""
    want = min(opened.size - offset, limit)
    return os.pread(opened.fd, want, offset) if want > 0 else b""
