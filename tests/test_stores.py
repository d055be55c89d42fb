"""The store contract, on both stores: a SQLite file and a schema on a real PostgreSQL server.

Idempotency, disjoint leases that expire, lingering, groups, the per-pixel circuit and its
probe, owner-checked settling, dead letters, consent holds, ``pending`` for one process's own
rows, and the PostgreSQL schema installed once by many processes starting together.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers.stores import POSTGRES_URL

from capi_bridge.delivery import open_store
from capi_bridge.delivery.store import Claim, State, Store, StoreError

NOW = 1_800_000_000.0
EXPIRES = NOW + 7 * 86400
KEY = "tab-session-id-0001"


def url_of(target: dict[str, Any]) -> str:
    return target.get("outbox_url") or "sqlite:///" + target["outbox_path"]


@pytest.fixture
def open_target(store_target: dict[str, Any]) -> Iterator[Callable[[], Store]]:
    """``open() -> Store``: a new handle on the test's outbox (another process's view)."""
    opened: list[Store] = []

    def open_() -> Store:
        store = open_store(url_of(store_target), schema=store_target.get("outbox_schema", "x"))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_target: Callable[[], Store]) -> Store:
    return open_target()


def rows(n: int, *, pixel: str = "111", test_code: str = "", prefix: str = "e") -> list[Any]:
    payload = json.dumps({"event_name": "Purchase", "event_id": "x"})
    return [(pixel, "Purchase", f"{prefix}{i}", test_code, EXPIRES, payload) for i in range(n)]


def claim(store: Store, owner: str = "h:1:a", *, now: float = NOW, **kw: Any) -> Claim:
    options: dict[str, Any] = {"limit": 1000, "lease": 60.0, "linger": 0.0}
    options.update(kw)
    store.prepare()  # the dispatcher does this at the start of every pass
    return store.claim("111", "", owner=owner, now=now, **options)


def ids(batch: Claim) -> list[int]:
    return [r.id for r in batch.rows]


def test_enqueue_is_idempotent_across_handles_and_counts_duplicates(
    open_target: Callable[[], Store],
) -> None:
    store, other = open_target(), open_target()
    assert store.enqueue(rows(1), NOW) == 1
    assert other.enqueue(rows(1), NOW) == 0  # another process, the same key
    assert store.enqueue(rows(3), NOW) == 2  # one call: one old row, two new
    assert other.enqueue(rows(1, pixel="222"), NOW) == 1  # another pixel: new
    stats = store.stats(NOW)
    assert (stats.pending, stats.deduplicated, stats.undelivered) == (4, 2, 4)


def test_claims_are_disjoint_and_leases_expire(open_target: Callable[[], Store]) -> None:
    store, other = open_target(), open_target()
    store.enqueue(rows(30), NOW)
    first = claim(store, "h:1:a", limit=20)
    second = claim(other, "h:2:b", limit=20)
    assert len(first.rows) == 20 and len(second.rows) == 10
    assert not set(ids(first)) & set(ids(second))
    assert claim(store, "h:3:c").rows == []  # everything is leased
    assert store.stats(NOW).in_flight == 30
    later = claim(store, "h:3:c", now=NOW + 61)  # both leases expired: a dead host
    assert len(later.rows) == 30


def test_concurrent_claimers_never_share_a_row(open_target: Callable[[], Store]) -> None:
    handles = [open_target() for _ in range(4)]
    handles[0].enqueue(rows(400), NOW)
    handles[0].prepare()

    def take(n: int) -> list[int]:
        got: list[int] = []
        while (
            batch := handles[n]
            .claim("111", "", owner=f"h:{n}:x", now=NOW, limit=7, lease=60, linger=0)
            .rows
        ):
            got += [r.id for r in batch]
        return got

    with ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(take, range(4)))
    every = [i for part in taken for i in part]
    assert len(every) == len(set(every)) == 400


def test_partial_batch_lingers_but_full_batch_goes_at_once(store: Store) -> None:
    store.enqueue(rows(5), NOW)
    young = claim(store, now=NOW + 0.01, limit=10, linger=0.1)
    assert young.rows == [] and young.wake_at == pytest.approx(NOW + 0.1)
    assert len(claim(store, now=NOW + 0.11, limit=10, linger=0.1).rows) == 5
    store.enqueue(rows(10, prefix="f"), NOW + 1)
    assert len(claim(store, now=NOW + 1, limit=10, linger=0.1).rows) == 10


def test_groups_by_pixel_and_test_code(store: Store) -> None:
    store.enqueue(rows(2, pixel="111") + rows(2, pixel="222", test_code="TEST1"), NOW)
    store.enqueue(rows(1, pixel="111", test_code="TEST2", prefix="t"), NOW)
    store.prepare()
    assert store.groups() == [("111", ""), ("111", "TEST2"), ("222", "TEST1")]


def test_failure_pauses_the_pixel_and_one_probe_half_opens_it(
    open_target: Callable[[], Store],
) -> None:
    store, other = open_target(), open_target()
    store.enqueue(rows(3), NOW)
    batch = claim(store)
    failures, until = store.failed(
        ids(batch), "111", "h:1:a", kind="auth", now=NOW, delay=lambda n: 10.0 * n,
        error=None, burn_attempt=False,
    )  # fmt: skip
    assert (failures, until) == (1, NOW + 10)
    paused = claim(other, "h:2:b", now=NOW + 5)
    assert paused.rows == [] and paused.paused_until == NOW + 10
    probe = claim(store, now=NOW + 11)
    assert probe.probe and len(probe.rows) == 3 and probe.rows[0].attempts == 0
    assert claim(other, "h:2:b", now=NOW + 12).paused_until == NOW + 11 + 60  # held for it
    again, _ = store.failed(
        ids(probe), "111", "h:1:a", kind="auth", now=NOW + 12, delay=lambda n: 1.0,
        error=None, burn_attempt=False,
    )  # fmt: skip
    assert again == 2  # consecutive failures of the same kind, counted for the pixel
    ok = claim(other, "h:2:b", now=NOW + 14)
    assert other.delivered(ids(ok), "111", "h:2:b") is True  # pause lifted
    assert store.stats(NOW + 14).paused == ()


def test_backoff_burns_attempts_and_records_the_last_error(store: Store) -> None:
    store.enqueue(rows(2), NOW)
    batch = claim(store)
    error = '{"at": 1800000000.0, "pixel_id": "111", "kind": "retry", "message": "boom"}'
    store.failed(
        ids(batch), "111", "h:1:a", kind="retry", now=NOW, delay=lambda n: 2.0, error=error,
        burn_attempt=True,
    )  # fmt: skip
    stats = store.stats(NOW + 1)
    assert (stats.pending, stats.retrying, stats.in_flight) == (0, 2, 0)
    assert stats.last_error is not None and stats.last_error.message == "boom"
    assert [r.attempts for r in claim(store, now=NOW + 3).rows] == [1, 1]


def test_a_late_reply_under_a_lost_lease_changes_nothing(
    open_target: Callable[[], Store],
) -> None:
    slow, fast = open_target(), open_target()
    slow.enqueue(rows(2), NOW)
    first = claim(slow, "host-a:1:slow", lease=5)
    retaken = claim(fast, "host-b:1:fast", now=NOW + 6)  # the slow host's lease expired
    assert ids(retaken) == ids(first)
    slow.failed(
        ids(first), "111", "host-a:1:slow", kind="retry", now=NOW + 7, delay=lambda n: 100.0,
        error=None, burn_attempt=True,
    )  # fmt: skip
    slow.dead_letter(ids(first), "host-a:1:slow", reason="rejected", now=NOW + 7, message="x")
    slow.delivered(ids(first), "111", "host-a:1:slow")
    stats = fast.stats(NOW + 8)
    assert (stats.in_flight, stats.delivered, stats.dead) == (2, 0, 0)  # still the new owner's
    fast.delivered(ids(retaken), "111", "host-b:1:fast")
    assert fast.stats(NOW + 8).delivered == 2


def test_dead_letters_retry_and_purge(store: Store) -> None:
    store.enqueue(rows(3), NOW)
    batch = claim(store)
    store.dead_letter(
        [batch.rows[0].id], "h:1:a", reason="rejected", now=NOW,
        message="User Parameter Not Hashed", code=100, subcode=2804016, fbtrace_id="TRACE1",
    )  # fmt: skip
    store.delivered(ids(batch)[1:], "111", "h:1:a")
    [letter] = store.dead_letters()
    assert (letter.reason, letter.code, letter.subcode, letter.fbtrace_id) == (
        "rejected", 100, 2804016, "TRACE1",
    )  # fmt: skip
    assert store.enqueue(rows(1), NOW) == 0  # a dead event's key still deduplicates
    states = store.query("SELECT state, payload FROM outbox ORDER BY id")
    assert states == [(State.DEAD, None), (State.DELIVERED, None), (State.DELIVERED, None)]
    assert store.retry_dead([letter.id], NOW + 1) == 1
    assert store.dead_letters() == []
    requeued = claim(store, now=NOW + 2)
    assert [r.event_id for r in requeued.rows] == ["e0"] and requeued.rows[0].payload
    removed = store.purge(delivered=True, dead=True, older_than=None, now=NOW + 3)
    assert removed["dead"] == 0 and removed["delivered"] >= 1  # SQLite keeps its newest row
    assert store.stats(NOW + 3).in_flight == 1  # pending events are never purged


def test_pending_watches_one_origins_rows_up_to_the_mark(store: Store) -> None:
    store.enqueue(rows(2), NOW, origin="me")
    store.enqueue(rows(1, prefix="theirs"), NOW, origin="them")
    mark = store.mark()
    assert store.pending("me", mark) and store.pending("them", mark)
    batch = claim(store)
    mine = [r.id for r in batch.rows if not r.event_id.startswith("theirs")]
    store.delivered(mine, "111", "h:1:a")
    assert not store.pending("me", mark)  # theirs is still pending: not ours to wait for
    store.enqueue(rows(1, prefix="later"), NOW, origin="me")
    assert not store.pending("me", mark) and store.pending("me", store.mark())


def test_held_rows_wait_for_release_or_go(store: Store) -> None:
    assert store.enqueue(rows(2, prefix="h"), NOW, hold=KEY) == 2
    store.enqueue(rows(1, prefix="c"), NOW)
    assert [r.event_id for r in claim(store).rows] == ["c0"]  # held rows are never claimed
    assert store.stats(NOW).held == 2
    assert store.release(KEY, NOW + 5, "me") == 2
    assert store.pending("me", store.mark())
    assert sorted(r.event_id for r in claim(store, "h:2:b", now=NOW + 5).rows) == ["h0", "h1"]
    store.enqueue(rows(3, prefix="old"), NOW - 100, hold="other-key-0001")
    store.enqueue(rows(1, prefix="young"), NOW, hold="other-key-0001")
    assert store.expire_held(NOW - 50) == 3
    assert store.forget("other-key-0001") == 1
    stats = store.stats(NOW)
    assert (stats.held, stats.held_expired) == (0, 3)  # forgotten rows are not "expired"


def test_a_reader_never_creates_an_outbox(store_target: dict[str, Any]) -> None:
    with pytest.raises(StoreError, match="cannot open the outbox"):
        open_store(
            url_of(store_target), schema=store_target.get("outbox_schema", "x"), create=False
        )


def test_many_processes_install_the_postgres_schema_once(pg_schema: str) -> None:
    code = (
        "import sys; from capi_bridge.delivery import open_store;"
        "s = open_store(sys.argv[1], schema=sys.argv[2]); print(s.mark()); s.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, POSTGRES_URL, pg_schema], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(6)
    ]  # fmt: skip
    results = [proc.communicate(60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, results
    store = open_store(POSTGRES_URL, schema=pg_schema, create=False)
    try:
        assert store.query("SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
        assert store.enqueue(rows(1), NOW) == 1
    finally:
        store.close()


def test_settling_by_id_ranges_under_concurrent_claims(open_target: Callable[[], Store]) -> None:
    """Interleaved small claims leave each owner ids in short runs with gaps (other owners'
    rows in between); settling them by ranges must touch exactly the caller's rows."""
    handles = [open_target() for _ in range(3)]
    handles[0].enqueue(rows(300), NOW)
    handles[0].prepare()
    taken: dict[int, list[int]] = {n: [] for n in range(3)}
    round_ = 0
    while True:  # round robin: owner n takes ids n*k..: runs of 4 interleaved with others'
        n = round_ % 3
        batch = handles[n].claim("111", "", owner=f"h:{n}:x", now=NOW, limit=4, lease=60, linger=0)
        if not batch.rows:
            break
        taken[n] += [r.id for r in batch.rows]
        round_ += 1
    assert sorted(i for part in taken.values() for i in part) == sorted(set(range(1, 301)))
    # Owner 2 settles a set spanning owner 0's and 1's ids (a late reply, a wrong list):
    # nothing of theirs moves.
    handles[2].delivered(list(range(1, 301)), "111", "h:2:x", now=NOW)
    assert handles[0].stats(NOW).delivered == len(taken[2])
    handles[0].failed(
        taken[0],
        "111",
        "h:0:x",
        kind="retry",
        now=NOW,
        delay=lambda n: 0.0,
        error=None,
        burn_attempt=True,
    )
    handles[1].dead_letter(taken[1], "h:1:x", reason="rejected", now=NOW, message="bad")
    stats = handles[0].stats(NOW)
    assert (stats.delivered, stats.dead, stats.retrying) == (len(taken[2]), len(taken[1]), 100)
    again = handles[0].claim("111", "", owner="h:0:y", now=NOW + 1, limit=1000, lease=60, linger=0)
    assert sorted(r.id for r in again.rows) == sorted(taken[0])
    assert all(r.attempts == 1 for r in again.rows)


def test_id_sets_select_exactly_the_ids() -> None:
    from capi_bridge.delivery.id_ranges import id_sets

    ids_ = [9, 1, 2, 3, 4, 7, 20, 21, 22, 23, 24, 25, 30, 2, *range(100, 1700)]
    sets = list(id_sets(ids_))
    assert ("id BETWEEN ? AND ?", [1, 4]) in sets
    assert ("id BETWEEN ? AND ?", [100, 1699]) in sets
    chosen: set[int] = set()
    for where, params in sets:
        if where.startswith("id BETWEEN"):
            chosen |= set(range(params[0], params[1] + 1))
        else:
            assert where.count("?") == len(params) <= 500
            chosen |= set(params)
    assert chosen == set(ids_)
    assert list(id_sets([])) == []


def test_writers_of_one_process_queue_and_a_held_lock_reads_as_busy(tmp_path: Any) -> None:
    """Threads of one process take turns on the store's own lock before SQLite's: every row
    lands, and a writer that cannot get its turn within its wait fails as a locked file does."""
    import sqlite3
    import threading

    from capi_bridge.delivery.sqlite_store import SQLiteStore, is_busy
    from capi_bridge.delivery.sqlite_writers import WriteLock

    store = SQLiteStore(str(tmp_path / "o.sqlite3"))
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda n: [store.enqueue(rows(1, prefix=f"t{n}-{i}-"), NOW) for i in range(50)],
                range(4),
            )
        )
    assert store.stats(NOW).pending == 200
    lock = WriteLock(busy_timeout=5)
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.held(None):
            taken.set()
            done.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(5)
    with pytest.raises(sqlite3.OperationalError) as raised:
        lock.acquire(0.01)
    assert is_busy(raised.value)
    done.set()
    holder.join(5)
    lock.acquire(0.01)  # free again
    lock.release()
    store.close()
