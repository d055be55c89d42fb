"""The SQLite outbox on its own: durability settings, idempotency, leases, settling, fork."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from capi_bridge import leases
from capi_bridge.leases import new_owner_id
from capi_bridge.outbox import DEAD, DELIVERED, PENDING, Outbox
from capi_bridge.outbox_admin import dead_letters, purge, read_stats, retry_dead

NOW = 1_800_000_000.0
EXPIRES = NOW + 7 * 86400


def rows(n: int, *, pixel: str = "111", test_code: str = "", prefix: str = "e") -> list[tuple]:
    payload = json.dumps({"event_name": "Purchase", "event_id": "x"})
    return [(pixel, "Purchase", f"{prefix}{i}", test_code, EXPIRES, payload) for i in range(n)]


def claim(outbox: Outbox, owner: str = "h:1:a", *, now: float = NOW, **kw: object):
    options: dict[str, object] = {"limit": 1000, "lease": 60.0, "linger": 0.0}
    options.update(kw)
    leases.ingest(outbox)  # the dispatcher does this at the start of every pass
    return leases.claim(outbox, "111", "", owner=owner, now=now, **options)  # type: ignore[arg-type]


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


def test_insert_is_idempotent_and_counts_duplicates(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    assert outbox.insert(rows(1), NOW) == 1
    assert outbox.insert(rows(1), NOW) == 0  # a page reload: same pixel, name and id
    assert outbox.insert(rows(3), NOW) == 2  # bulk: one old, two new, one transaction
    other_process_view = Outbox(outbox_path)
    assert other_process_view.insert(rows(1, pixel="222"), NOW) == 1  # another pixel: new
    stats = read_stats(Outbox(outbox_path), NOW)
    assert (stats.pending, stats.deduplicated) == (4, 2)


def test_a_locked_outbox_is_waited_for_not_failed(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    other = sqlite3.connect(outbox_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(outbox.insert(rows(1), NOW)))
    writer.start()
    writer.join(0.05)
    assert writer.is_alive() and result == []  # still waiting, not failed
    other.execute("COMMIT")
    writer.join(5)
    assert result == [1]


def test_claims_are_disjoint_and_leases_expire(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(30), NOW)
    first = claim(outbox, "h:1:a", limit=20)
    second = claim(Outbox(outbox_path), "h:2:b", limit=20)
    assert len(first.rows) == 20 and len(second.rows) == 10
    assert not {r.id for r in first.rows} & {r.id for r in second.rows}
    assert claim(outbox, "h:3:c").rows == []  # everything is leased
    later = claim(outbox, "h:3:c", now=NOW + 61)  # both leases expired: a crashed owner
    assert len(later.rows) == 30


def test_partial_batch_lingers_but_full_batch_goes_at_once(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(5), NOW)
    young = claim(outbox, now=NOW + 0.01, limit=10, linger=0.1)
    assert young.rows == [] and young.wake_at == pytest.approx(NOW + 0.1)
    assert len(claim(outbox, now=NOW + 0.11, limit=10, linger=0.1).rows) == 5
    outbox.insert(rows(10, prefix="f"), NOW + 1)
    assert len(claim(outbox, now=NOW + 1, limit=10, linger=0.1).rows) == 10


def test_groups_by_pixel_and_test_code(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(2, pixel="111") + rows(2, pixel="222", test_code="TEST1"), NOW)
    outbox.insert(rows(1, pixel="111", test_code="TEST2", prefix="t"), NOW)
    assert leases.groups(outbox) == []  # fresh rows are invisible until ingested
    assert leases.ingest(outbox, limit=2) == 5  # in small transactions
    assert leases.groups(outbox) == [("111", ""), ("111", "TEST2"), ("222", "TEST1")]


def _dead_local_owner() -> str:
    """A lease owner on this host whose process has exited (a pid that was alive once)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return f"{socket.gethostname()}:{int(proc.stdout)}:dead"


def test_dead_local_owner_is_reclaimed(outbox_path: str) -> None:
    dead_owner = _dead_local_owner()
    outbox = Outbox(outbox_path)
    outbox.insert(rows(4), NOW)
    assert len(claim(outbox, dead_owner, now=NOW).rows) == 4
    alive = new_owner_id()  # this process: alive, must keep its lease
    outbox.insert(rows(2, prefix="g"), NOW)
    assert len(claim(outbox, alive, now=NOW).rows) == 2
    other_host = "elsewhere:1:x"  # cannot be checked from here: left to lease expiry
    outbox.insert(rows(1, prefix="h"), NOW)
    assert len(claim(outbox, other_host, now=NOW).rows) == 1

    def is_alive(pid: int) -> bool:
        return pid == os.getpid()

    assert leases.reclaim_dead_owners(outbox, socket.gethostname(), is_alive) == 4
    assert len(claim(outbox, "h:9:z", now=NOW + 1).rows) == 4


def test_circuit_held_by_a_dead_prober_reopens_at_once(outbox_path: str) -> None:
    dead_owner = _dead_local_owner()
    outbox = Outbox(outbox_path)
    outbox.insert(rows(4), NOW)
    first = claim(outbox, limit=2)
    leases.failed(
        outbox,
        [r.id for r in first.rows],
        "111",
        kind="retry",
        now=NOW,
        delay=lambda n: 1.0,
        error=None,
        burn_attempt=True,
    )
    probe = claim(outbox, dead_owner, now=NOW + 2, limit=2)
    assert probe.probe  # ... and then the prober was SIGKILLed mid-request
    assert claim(outbox, now=NOW + 3).paused_until == NOW + 62
    assert leases.reclaim_dead_owners(outbox, socket.gethostname(), lambda pid: False) == 2
    assert len(claim(outbox, now=NOW + 3).rows) == 4


def test_failure_pauses_the_pixel_and_a_probe_half_opens_it(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(3), NOW)
    batch = claim(outbox)
    failures, until = leases.failed(
        outbox,
        [r.id for r in batch.rows],
        "111",
        kind="auth",
        now=NOW,
        delay=lambda n: 10.0 * n,
        error=None,
        burn_attempt=False,
    )
    assert (failures, until) == (1, NOW + 10)
    paused = claim(outbox, now=NOW + 5)
    assert paused.rows == [] and paused.paused_until == NOW + 10
    probe = claim(outbox, now=NOW + 11)
    assert probe.probe and len(probe.rows) == 3 and probe.rows[0].attempts == 0
    assert claim(outbox, "h:2:b", now=NOW + 12).paused_until == NOW + 11 + 60  # held for probe
    again, _ = leases.failed(
        outbox,
        [r.id for r in probe.rows],
        "111",
        kind="auth",
        now=NOW + 12,
        delay=lambda n: 1.0,
        error=None,
        burn_attempt=False,
    )
    assert again == 2  # consecutive failures of the same kind
    ok = claim(outbox, now=NOW + 14)
    assert leases.delivered(outbox, [r.id for r in ok.rows], "111") is True  # pause lifted
    assert read_stats(outbox, NOW + 14).paused == ()


def test_backoff_burns_attempts_and_keeps_rows(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(2), NOW)
    batch = claim(outbox)
    leases.failed(
        outbox,
        [r.id for r in batch.rows],
        "111",
        kind="retry",
        now=NOW,
        delay=lambda n: 2.0,
        error='{"at": 1800000000.0, "pixel_id": "111", "kind": "retry", "message": "boom"}',
        burn_attempt=True,
    )
    stats = read_stats(outbox, NOW + 1)
    assert (stats.pending, stats.retrying, stats.in_flight) == (0, 2, 0)
    assert stats.last_error is not None and stats.last_error.message == "boom"
    assert [r.attempts for r in claim(outbox, now=NOW + 3).rows] == [1, 1]


def test_dead_letter_retry_and_purge(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(3), NOW)
    batch = claim(outbox)
    leases.dead_letter(
        outbox,
        [batch.rows[0].id],
        reason="rejected",
        now=NOW,
        message="User Parameter Not Hashed",
        code=100,
        subcode=2804016,
        fbtrace_id="TRACE1",
    )
    leases.delivered(outbox, [r.id for r in batch.rows[1:]], "111")
    [letter] = dead_letters(outbox)
    assert (letter.reason, letter.code, letter.subcode, letter.fbtrace_id) == (
        "rejected",
        100,
        2804016,
        "TRACE1",
    )
    assert outbox.insert(rows(1), NOW) == 0  # a dead event's key still deduplicates
    state = outbox.query("SELECT state, payload FROM outbox ORDER BY id")
    assert state == [(DEAD, None), (DELIVERED, None), (DELIVERED, None)]
    assert retry_dead(outbox, [letter.id], NOW + 1) == 1
    assert dead_letters(outbox) == []
    assert outbox.query("SELECT state FROM outbox WHERE id = ?", (letter.id,)) == [(PENDING,)]
    requeued = claim(outbox, now=NOW + 2)
    assert [r.event_id for r in requeued.rows] == ["e0"] and requeued.rows[0].payload
    removed = purge(outbox, delivered=True, dead=True, older_than=None, now=NOW + 3)
    assert removed == {"delivered": 1, "dead": 0}  # the newest row stays: ids only grow
    assert outbox.query("SELECT count(*) FROM outbox WHERE state = 0") == [(1,)]


def test_forget_settled_keeps_pending_rows(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(4), NOW - 3 * 86400)  # three days ago
    batch = claim(outbox, limit=3, now=NOW)
    leases.delivered(outbox, [r.id for r in batch.rows], "111")
    outbox.insert(rows(2, prefix="new"), NOW)
    leases.delivered(outbox, [r.id for r in claim(outbox, now=NOW).rows[-2:]], "111")
    assert outbox.forget_settled(NOW - 2 * 86400, limit=2) == 3
    left = outbox.query("SELECT event_id, state FROM outbox ORDER BY id")
    assert left == [("e3", PENDING), ("new0", DELIVERED), ("new1", DELIVERED)]


def test_has_pending_watches_only_rows_up_to_the_mark(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(2), NOW)
    mark = outbox.max_id()
    assert outbox.has_pending(mark)
    leases.delivered(outbox, [r.id for r in claim(outbox).rows], "111")
    outbox.insert(rows(1, prefix="later"), NOW)
    assert not outbox.has_pending(mark)
    assert outbox.has_pending(outbox.max_id())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_connection(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(1), NOW)
    parent_conn = outbox.conn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not touch the inherited connection
        try:
            ok = outbox.conn() is not parent_conn and outbox.insert(rows(1, prefix="c"), NOW) == 1
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
        outbox.insert(rows(1), NOW)  # not accepted, and the caller knows it


def test_fresh_rows_are_never_hidden_by_a_reused_id(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.insert(rows(3), NOW)
    assert outbox.has_pending(outbox.max_id())  # fresh rows count as pending before ingest
    assert read_stats(outbox, NOW).pending == 3
    leases.delivered(outbox, [r.id for r in claim(outbox).rows], "111")
    cursor = outbox.ingested()
    assert outbox.forget_settled(NOW + 10 * 86400) == 2  # everything is "old"...
    purge(outbox, delivered=True, dead=True, older_than=None, now=NOW + 10 * 86400)
    assert outbox.max_id() == cursor  # ...but the newest row is kept,
    outbox.insert(rows(1, prefix="next"), NOW)
    assert outbox.max_id() > cursor  # so a new row can never get an id below the cursor
    assert [r.event_id for r in claim(outbox).rows] == ["next0"]
