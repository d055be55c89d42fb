"""The SQLite store's fast path (``take``): fresh rows sent as stored, leased as one id range.

What must hold whatever the timing: a taken row is in exactly one live claim and is not
rewritten before it is settled; two owners never take the same row; a claim whose owner died
or whose deadline passed gives its rows to anyone; a late reply under an expired claim changes
nothing; every observation is filed exactly once; a paused pixel's rows wait for its probe on the
classic path; readers (stats, flush) still see rows that are being sent. Clocks are injected.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from helpers.stores import dead_local_owner

from capi_bridge.delivery.processes import new_owner_id
from capi_bridge.delivery.sqlite_store import SQLiteStore as Outbox
from capi_bridge.delivery.store import State, Taken
from capi_bridge.graph import GraphResult

NOW = 1_800_000_000.0
EXPIRES = NOW + 7 * 86400
TAG = (2, None, 1, 5, "abcdef0123456789", None, "em=1a2b")  # a server event's observation
A, B = "host:1:a", "host:2:b"


def rows(n: int, *, pixel: str = "111", prefix: str = "e") -> list[tuple[Any, ...]]:
    payload = json.dumps({"event_name": "Purchase", "event_id": "x"})
    return [(pixel, "Purchase", f"{prefix}{i}", "", EXPIRES, payload) for i in range(n)]


def store(outbox: Outbox, n: int, **kw: Any) -> None:
    outbox.enqueue(rows(n, **kw), NOW, tags=[TAG] * n, origin="me")


def take(outbox: Outbox, owner: str = A, *, now: float = NOW, **kw: Any) -> Taken:
    options: dict[str, Any] = {"limit": 1000, "lease": 60.0, "linger": 0.0}
    options.update(kw)
    return outbox.take(owner=owner, now=now, **options)


def states(outbox: Outbox) -> list[int]:
    return [s for (s,) in outbox.query("SELECT state FROM outbox ORDER BY id")]


def observations(outbox: Outbox) -> int:
    return int(outbox.query("SELECT count(*) FROM observations")[0][0])


def reply(n: int) -> GraphResult:
    return GraphResult(events_received=n, messages=[], fbtrace_id="trace")


def test_taken_rows_are_one_claim_and_stay_untouched_until_settled(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 5)
    changes = outbox.conn().total_changes
    taken = take(outbox)
    assert taken.claim is not None and taken.size == 5
    group = taken.groups[("111", "")]
    assert group.ids == [1, 2, 3, 4, 5] and group.soonest == EXPIRES
    assert json.loads(f"[{group.payloads}]") == [json.loads(rows(1)[0][5])] * 5  # one read
    assert states(outbox) == [State.FRESH] * 5  # not rewritten: one claim row instead
    # the claim, the cursor, the observation cursor and 5 observations: no outbox row
    assert outbox.conn().total_changes - changes == 1 + 1 + 1 + 5
    assert outbox.query("SELECT owner, low, high, until FROM claims") == [(A, 1, 5, NOW + 60)]
    stats = outbox.stats(NOW)
    assert (stats.pending, stats.in_flight) == (0, 5)  # still counted: being sent
    assert outbox.pending("me", 5)  # flush() keeps waiting for them
    ids = group.ids
    assert outbox.delivered(ids[:2], "111", A, reply(2), NOW, claim=taken.claim) is False
    assert outbox.query("SELECT count(*) FROM claims") == [(1,)]  # three rows still out
    outbox.delivered(ids[2:], "111", A, reply(3), NOW, claim=taken.claim)
    assert states(outbox) == [State.DELIVERED] * 5
    assert outbox.query("SELECT count(*) FROM claims") == [(0,)]  # closed with its last row
    assert outbox.query("SELECT count(*) FROM outbox WHERE payload IS NOT NULL") == [(0,)]
    assert outbox.counters()["delivered"] == 5 and not outbox.pending("me", 5)
    assert take(outbox).claim is None


def test_a_take_of_several_groups_reads_each_group_and_one_group_reads_the_same(
    outbox_path: str,
) -> None:
    """One pixel's claim is read in one pass, several groups' with GROUP BY: same answer."""
    outbox = Outbox(outbox_path)
    store(outbox, 2, pixel="111")
    store(outbox, 1, pixel="222", prefix="g")
    outbox.enqueue([(*rows(1, prefix="t")[0][:3], "TEST1", EXPIRES, "{}")], NOW)
    store(outbox, 1, pixel="111", prefix="h")
    taken = take(outbox)
    assert {k: g.ids for k, g in taken.groups.items()} == {
        ("111", ""): [1, 2, 5],
        ("222", ""): [3],
        ("111", "TEST1"): [4],
    }
    assert len(json.loads(f"[{taken.groups[('111', '')].payloads}]")) == 3
    store(outbox, 3, pixel="222", prefix="k")
    (group,) = take(outbox).groups.items()
    assert group[0] == ("222", "") and group[1].ids == [6, 7, 8]
    assert len(json.loads(f"[{group[1].payloads}]")) == 3 and group[1].soonest == EXPIRES


def test_two_owners_never_take_the_same_rows(outbox_path: str) -> None:
    outbox, other = Outbox(outbox_path), Outbox(outbox_path)  # two processes' connections
    store(outbox, 7)
    first = take(outbox, A, limit=4)
    second = take(other, B, limit=4)
    got = [set(t.groups[("111", "")].ids) for t in (first, second)]
    assert got == [{1, 2, 3, 4}, {5, 6, 7}]
    assert take(outbox, A).claim is None


def test_a_young_partial_batch_lingers_but_its_observations_are_filed(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 3)
    taken = take(outbox, now=NOW + 0.05, linger=0.5)
    assert taken.claim is None and taken.wake_at == NOW + 0.5
    assert observations(outbox) == 3 and outbox.query("SELECT count(*) FROM claims") == [(0,)]
    assert take(outbox, now=NOW + 0.5, linger=0.5).size == 3
    assert observations(outbox) == 3  # filed once


def test_observations_are_filed_once_whichever_way_rows_go(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 4)
    assert outbox.prepare() == 4  # diagnostics file everything now (and ingest)
    store(outbox, 2, prefix="g")
    taken = take(outbox)
    assert taken.size == 2 and observations(outbox) == 6
    assert outbox.prepare() == 0 and observations(outbox) == 6
    ids = taken.groups[("111", "")].ids
    adopted = outbox.adopt(taken.claim or 0, ids, A, NOW + 60)  # its send failed: leases now
    assert [r.event_id for r in adopted] == ["g0", "g1"] and observations(outbox) == 6
    assert outbox.query("SELECT count(*) FROM claims") == [(0,)]
    assert (
        outbox.query("SELECT lease_owner, lease_until FROM outbox WHERE id > 4")
        == [(A, NOW + 60)] * 2
    )
    assert outbox.query("SELECT count(*) FROM outbox WHERE obs_channel IS NOT NULL") == [(0,)]


def test_an_expired_claim_gives_its_rows_to_anyone_and_a_late_reply_changes_nothing(
    outbox_path: str,
) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 3)
    stale = take(outbox, A, lease=30.0)
    store(outbox, 1, prefix="g")
    later = take(outbox, B, now=NOW + 31)  # A's deadline passed: its rows are pending now
    assert later.groups[("111", "")].ids == [4]
    assert states(outbox) == [State.PENDING] * 3 + [State.FRESH]
    ids = stale.groups[("111", "")].ids
    assert outbox.adopt(stale.claim or 0, ids, A, NOW + 90) == []  # nothing of it is A's
    assert outbox.delivered(ids, "111", A, reply(3), NOW + 32, claim=stale.claim) is False
    assert outbox.counters()["delivered"] == 0  # A's late answer settled nothing
    found = outbox.claim("111", "", owner=B, now=NOW + 32, limit=10, lease=60.0, linger=0.0)
    assert [r.id for r in found.rows] == ids  # the classic path sends them


def test_renewing_a_claim_keeps_it(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 2)
    taken = take(outbox, A, lease=30.0)
    outbox.renew((), A, NOW + 90, claim=taken.claim)
    assert take(outbox, B, now=NOW + 60).claim is None  # not expired: nobody else has them
    assert states(outbox) == [State.FRESH] * 2


def test_a_dead_local_owners_claim_is_reclaimed_at_start_up(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 3)
    take(outbox, dead_local_owner())  # then SIGKILLed mid-request
    store(outbox, 2, prefix="g")
    alive = take(outbox, new_owner_id())  # this process: keeps its claim
    assert alive.size == 2
    assert outbox.reclaim(socket.gethostname(), lambda pid: pid == os.getpid()) == 3
    assert outbox.query("SELECT count(*) FROM claims") == [(1,)]  # the live one
    assert states(outbox) == [State.PENDING] * 3 + [State.FRESH] * 2


def test_a_paused_pixels_rows_wait_for_its_probe_on_the_classic_path(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 2, pixel="111")
    first = outbox.claim("111", "", owner=A, now=NOW, limit=1, lease=60.0, linger=0.0)
    assert not first.rows  # fresh rows are the fast path's
    taken = take(outbox, limit=1)
    (row,) = outbox.adopt(taken.claim or 0, taken.groups[("111", "")].ids, A, NOW + 60)
    outbox.failed(  # its send failed: pause the pixel
        [row.id], "111", A, kind="retry", now=NOW, delay=lambda n: 10.0, error=None,
        burn_attempt=True,
    )  # fmt: skip
    store(outbox, 2, pixel="222", prefix="g")
    taken = take(outbox)  # the paused pixel's second row and the other pixel's two
    assert list(taken.groups) == [("222", "")] and taken.size == 2
    assert states(outbox)[:2] == [State.PENDING, State.PENDING]
    probe = outbox.claim("111", "", owner=A, now=NOW + 11, limit=10, lease=60.0, linger=0.0)
    assert probe.probe and len(probe.rows) == 2


def test_held_rows_above_the_cursor_cost_one_write_not_one_per_pass(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 1)
    outbox.enqueue(rows(2, prefix="h"), NOW, hold="visitor", tags=[TAG] * 2)
    assert take(outbox).size == 1 and take(outbox).claim is None  # moves past the held rows
    changes = outbox.conn().total_changes
    assert take(outbox).claim is None
    assert outbox.conn().total_changes == changes  # an idle pass reads, writes nothing
    assert outbox.release("visitor", NOW) == 2  # released rows are pending: the classic path
    assert take(outbox).claim is None
    found = outbox.claim("111", "", owner=A, now=NOW, limit=10, lease=60.0, linger=0.0)
    assert [r.event_id for r in found.rows] == ["h0", "h1"]


def test_cursors_follow_held_rows_dropped_from_the_top(outbox_path: str) -> None:
    """Dropping the highest rows lowers both cursors: the next row reuses an id, and must
    still be taken and observed."""
    outbox = Outbox(outbox_path)
    store(outbox, 1)
    outbox.enqueue(rows(2, prefix="h"), NOW, hold="visitor", tags=[TAG] * 2)
    assert take(outbox).size == 1  # passes the held rows: both cursors at id 3
    assert outbox.forget("visitor") == 2
    store(outbox, 1, prefix="g")  # id 2 again
    taken = take(outbox)
    assert taken.groups[("111", "")].ids == [2] and '"x"' in taken.groups[("111", "")].payloads
    assert observations(outbox) == 2


def test_an_outbox_of_schema_5_takes_up_where_ingestion_stopped(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    store(outbox, 3)
    outbox.prepare()
    store(outbox, 2, prefix="g")
    conn = outbox.conn()  # as a version 5 file: no claims, no observed cursor
    conn.execute("DROP TABLE claims")
    conn.execute("DELETE FROM meta WHERE key = 'observed'")
    conn.execute("PRAGMA user_version = 5")
    outbox.close()
    upgraded = Outbox(outbox_path)
    assert upgraded.query("SELECT value FROM meta WHERE key = 'observed'") == [("3",)]
    assert take(upgraded).size == 2 and observations(upgraded) == 5
