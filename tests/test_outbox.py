"""The SQLite store on its own: durability settings, the ingestion cursor, local leases, fork.

The contract both stores keep (idempotency, leases, settling...) is in ``test_stores.py``."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import threading

import pytest
from helpers.stores import dead_local_owner

from capi_bridge.delivery import sqlite_store as sqlite_store_module
from capi_bridge.delivery.processes import new_owner_id
from capi_bridge.delivery.sqlite_store import SQLiteStore as Outbox
from capi_bridge.delivery.store import State

PENDING, DELIVERED = State.PENDING, State.DELIVERED

NOW = 1_800_000_000.0
EXPIRES = NOW + 7 * 86400


def rows(n: int, *, pixel: str = "111", test_code: str = "", prefix: str = "e") -> list[tuple]:
    payload = json.dumps({"event_name": "Purchase", "event_id": "x"})
    return [(pixel, "Purchase", f"{prefix}{i}", test_code, EXPIRES, payload) for i in range(n)]


def claim(outbox: Outbox, owner: str = "h:1:a", *, now: float = NOW, **kw: object):
    options: dict[str, object] = {"limit": 1000, "lease": 60.0, "linger": 0.0}
    options.update(kw)
    outbox.prepare()  # the dispatcher does this at the start of every pass
    return outbox.claim("111", "", owner=owner, now=now, **options)  # type: ignore[arg-type]


def test_wal_normal_sync_and_private_file(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    conn = outbox.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, set explicitly
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # waits are retried in Python
    assert stat.S_IMODE(os.stat(outbox_path).st_mode) == 0o600
    full = Outbox(outbox_path, synchronous="FULL")
    assert full.conn().execute("PRAGMA synchronous").fetchone()[0] == 2


def test_missing_outbox_is_not_created_for_readers(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "nope.sqlite3")
    with pytest.raises(FileNotFoundError):
        Outbox(path, create=False)
    assert not os.path.exists(path)


def test_a_locked_outbox_is_waited_for_not_failed(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(outbox_path)
    other = sqlite3.connect(outbox_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    met_the_lock = threading.Event()
    store_s_test = sqlite_store_module.is_busy

    def is_busy(exc: sqlite3.OperationalError) -> bool:  # the store's own test, noted
        busy = store_s_test(exc)
        if busy:
            met_the_lock.set()
        return busy

    monkeypatch.setattr(sqlite_store_module, "is_busy", is_busy)
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(outbox.enqueue(rows(1), NOW)))
    writer.start()
    assert met_the_lock.wait(30)  # it tried and met the lock; the lock is released only now,
    other.execute("COMMIT")  # so a writer that gave up at the lock would have stored nothing
    writer.join(30)
    assert result == [1]


def test_groups_by_pixel_and_test_code(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(2, pixel="111") + rows(2, pixel="222", test_code="TEST1"), NOW)
    outbox.enqueue(rows(1, pixel="111", test_code="TEST2", prefix="t"), NOW)
    assert outbox.groups() == []  # fresh rows are invisible until ingested
    assert outbox.prepare(limit=2) == 5  # in small transactions
    assert outbox.groups() == [("111", ""), ("111", "TEST2"), ("222", "TEST1")]


def test_dead_local_owner_is_reclaimed(outbox_path: str) -> None:
    dead_owner = dead_local_owner()
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(4), NOW)
    assert len(claim(outbox, dead_owner, now=NOW).rows) == 4
    alive = new_owner_id()  # this process: alive, must keep its lease
    outbox.enqueue(rows(2, prefix="g"), NOW)
    assert len(claim(outbox, alive, now=NOW).rows) == 2
    other_host = "elsewhere:1:x"  # cannot be checked from here: left to lease expiry
    outbox.enqueue(rows(1, prefix="h"), NOW)
    assert len(claim(outbox, other_host, now=NOW).rows) == 1

    def is_alive(pid: int) -> bool:
        return pid == os.getpid()

    assert outbox.reclaim(socket.gethostname(), is_alive) == 4
    assert len(claim(outbox, "h:9:z", now=NOW + 1).rows) == 4


def test_circuit_held_by_a_dead_prober_reopens_at_once(outbox_path: str) -> None:
    dead_owner = dead_local_owner()
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(4), NOW)
    first = claim(outbox, limit=2)
    outbox.failed(
        [r.id for r in first.rows],
        "111",
        "h:1:a",
        kind="retry",
        now=NOW,
        delay=lambda n: 1.0,
        error=None,
        burn_attempt=True,
    )
    probe = claim(outbox, dead_owner, now=NOW + 2, limit=2)
    assert probe.probe  # ... and then the prober was SIGKILLed mid-request
    assert claim(outbox, now=NOW + 3).paused_until == NOW + 62
    assert outbox.reclaim(socket.gethostname(), lambda pid: False) == 2
    assert len(claim(outbox, now=NOW + 3).rows) == 4


def test_forget_settled_keeps_pending_rows(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(4), NOW - 3 * 86400)  # three days ago
    batch = claim(outbox, limit=3, now=NOW)
    outbox.delivered([r.id for r in batch.rows], "111", "h:1:a")
    outbox.enqueue(rows(2, prefix="new"), NOW)
    outbox.delivered([r.id for r in claim(outbox, now=NOW).rows[-2:]], "111", "h:1:a")
    assert outbox.forget_settled(NOW - 2 * 86400, limit=2) == 3
    left = outbox.query("SELECT event_id, state FROM outbox ORDER BY id")
    assert left == [("e3", PENDING), ("new0", DELIVERED), ("new1", DELIVERED)]


def test_forked_child_opens_its_own_connection(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(1), NOW)
    parent_conn = outbox.conn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not touch the inherited connection
        try:
            ok = outbox.conn() is not parent_conn and outbox.enqueue(rows(1, prefix="c"), NOW) == 1
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert outbox.conn() is parent_conn
    assert outbox.query("SELECT count(*) FROM outbox") == [(2,)]
    assert parent_conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_errors_surface_to_the_caller(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.conn().execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError):
        outbox.enqueue(rows(1), NOW)  # not accepted, and the caller knows it


def test_fresh_rows_are_never_hidden_by_a_reused_id(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue(rows(3), NOW)
    assert outbox.pending("", outbox.mark())  # fresh rows count as pending before ingest
    assert outbox.stats(NOW).pending == 3
    outbox.delivered([r.id for r in claim(outbox).rows], "111", "h:1:a")
    cursor = outbox.ingested()
    assert outbox.forget_settled(NOW + 10 * 86400) == 2  # everything is "old"...
    outbox.purge(delivered=True, dead=True, older_than=None, now=NOW + 10 * 86400)
    assert outbox.mark() == cursor  # ...but the newest row is kept,
    outbox.enqueue(rows(1, prefix="next"), NOW)
    assert outbox.mark() > cursor  # so a new row can never get an id below the cursor
    assert [r.event_id for r in claim(outbox).rows] == ["next0"]


def test_a_batch_larger_than_one_statement_is_stored_whole(
    outbox_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a batch are inserted several per statement, as many as SQLite's parameter
    limit allows; a batch over it takes several statements in the same transaction."""
    from capi_bridge.delivery import sqlite_schema

    monkeypatch.setattr(sqlite_schema, "MAX_VARIABLES", 40)  # 2 rows of 16 per statement
    outbox = Outbox(outbox_path)
    tag = (2, None, 1, 5, "abcdef0123456789", None, "em=1a2b")
    assert outbox.enqueue(rows(3, prefix="x"), NOW) == 3
    assert outbox.enqueue(rows(7), NOW, tags=[tag] * 7) == 7
    assert outbox.enqueue(rows(5, prefix="x"), NOW) == 2  # x0-x2 were there
    assert outbox.counters()["deduplicated"] == 3
    stored = outbox.query("SELECT event_id, obs_preview FROM outbox WHERE event_id LIKE 'e%'")
    assert sorted(stored) == [(f"e{i}", "em=1a2b") for i in range(7)]
    with pytest.raises(ValueError, match="one tag per row"):
        outbox.enqueue(rows(2, prefix="y"), NOW, tags=[tag])
