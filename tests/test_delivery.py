"""The delivery engine end to end, on both stores (a SQLite file, a schema on a real PostgreSQL
server): real dispatchers, the fake Graph over HTTP, worker processes, SIGKILL.

No sleeps for timing: every wait is a condition with a deadline (``bridge.flush(timeout)``
returns whether this process's events drained, ``fake_graph.wait_for_events`` whether events
arrived).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers.delivery_worker import PIXEL, RAW_EMAIL_DOMAIN, RAW_PHONE, make_event
from helpers.stores import POSTGRES_URL, outbox_bytes
from helpers.waiting import until

from capi_bridge.bridge import Bridge
from capi_bridge.delivery.records import OutboxStats
from capi_bridge.testing import FakeGraph

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "delivery_worker.py")
MakeBridge = Callable[..., Bridge]


@pytest.fixture
def delivery_settings(delivery_settings: Any, store_target: dict[str, Any]) -> object:
    """Every test of this module runs on both stores."""
    return lambda **overrides: delivery_settings(**{**store_target, **overrides})


def outbox_arg(target: dict[str, Any]) -> str:
    """What a worker process is given: the SQLite file, or the database URL (its schema goes
    in the worker's environment, see :func:`_worker`)."""
    return str(target.get("outbox_url") or target["outbox_path"])


def all_delivered(bridge: Bridge, fake: FakeGraph, count: int, timeout: float = 30) -> bool:
    """Wait until ``count`` distinct events reached the fake and the outbox (every process's
    rows, which ``flush`` does not wait for) has nothing left to send."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bridge.flush(0.2)  # keeps this process's dispatcher going
        if len(delivered_ids(fake)) >= count and bridge.stats().undelivered == 0:
            return True
        fake.wait_for_events(len(fake.events) + 1, 0.1)
    return False


def paused(bridge: Bridge, timeout: float = 30) -> OutboxStats:
    """The stats once a pixel is paused (the dispatcher took Meta's answer): waited for, so
    that nothing has to be proved by a flush running out of time."""

    def paused_stats() -> OutboxStats | None:
        stats = bridge.stats()
        return stats if stats.paused else None

    return until(
        paused_stats,
        timeout=timeout,
        what="no pixel paused",
        step=lambda: bridge.flush(0.05),  # a bounded wait for the dispatcher's next pass
    )


def delivered_ids(fake: FakeGraph) -> collections.Counter[str]:
    return collections.Counter(e["event_id"] for e in fake.events)


def batch_sizes(fake: FakeGraph) -> list[int]:
    """Events per accepted request (the fake stamps one request's events with one time)."""
    return list(collections.Counter(e["received_at"] for e in fake.events).values())


def test_events_are_batched_per_pixel_and_test_code(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge(pixel_id="111,222", linger=5.0)  # flush() sends the partial rest
    ids = bridge.enqueue_many(make_event(i) for i in range(1500))  # all there at once
    bridge.enqueue(make_event(0, "test"), test_event_code="TEST123")
    assert bridge.flush(20)
    events = fake_graph.events
    assert len(events) == 3002  # every event to both pixels, the test event too
    per_pixel = collections.Counter((e["pixel_id"], e.get("test_event_code")) for e in events)
    assert per_pixel == {
        ("111", None): 1500,
        ("222", None): 1500,
        ("111", "TEST123"): 1,
        ("222", "TEST123"): 1,
    }
    assert set(delivered_ids(fake_graph)) == {*ids, "test-0"}
    # per pixel a full batch and the rest (whenever the dispatcher woke), and the test event
    assert sorted(batch_sizes(fake_graph)) == [1, 1, 500, 500, 1000, 1000]
    stats = bridge.stats()
    assert (stats.delivered, stats.undelivered, stats.dead) == (3002, 0, 0)


def test_a_taken_group_larger_than_a_request_is_sent_in_requests_of_batch_size(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    """Two pixels configured, so one take is two requests' worth of rows; all of them for one
    pixel make a group over one request's size, sent through leases in full batches."""
    bridge = make_bridge(pixel_id="111,222", linger=5.0)
    ids = bridge.enqueue_many((make_event(i) for i in range(1500)), pixel_id="111")
    assert bridge.flush(20)
    assert set(delivered_ids(fake_graph)) == set(ids)
    assert {e["pixel_id"] for e in fake_graph.events} == {"111"}
    assert sorted(batch_sizes(fake_graph)) == [500, 1000]
    stats = bridge.stats()
    assert (stats.delivered, stats.undelivered, stats.dead) == (1500, 0, 0)


def test_reload_of_the_same_event_is_sent_once(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    event = make_event(7, "thanks")
    assert bridge.enqueue(event) == bridge.enqueue(event) == "thanks-7"
    assert bridge.flush(10)
    second = make_bridge()  # another app process on the same outbox, still within 48 h
    second.enqueue(event)
    assert second.flush(10)
    assert delivered_ids(fake_graph) == {"thanks-7": 1}
    assert bridge.stats().deduplicated == 2


def test_no_event_lost_through_faults(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    bridge = make_bridge(request_timeout=0.5, auth_pause=0.3, max_backoff=1.0)
    fake_graph.add_fault(mode="status", status=500, count=3)
    fake_graph.add_fault(mode="status", status=429, retry_after=0.2, count=1)
    fake_graph.add_fault(mode="delay", seconds=1.0, count=1)  # past the client timeout
    fake_graph.add_fault(mode="reset", count=2)
    fake_graph.add_fault(mode="code", code=190, count=2)  # the token fails for a while
    fake_graph.add_fault(mode="code", code=2, count=1)
    ids = bridge.enqueue_many(make_event(i, "fault") for i in range(10_000))
    assert bridge.flush(40), bridge.stats()
    assert fake_graph.pending_faults == 0
    got = delivered_ids(fake_graph)
    assert set(ids) <= set(got)  # none lost (a timed-out batch may also have arrived)
    stats = bridge.stats()
    assert (stats.undelivered, stats.dead, stats.delivered) == (0, 0, 10_000)
    assert stats.last_error is not None


def test_poison_event_is_isolated_and_dead_lettered(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge(linger=0.5)
    events = [make_event(i, "batch") for i in range(999)]
    wire = json.loads(json.dumps(make_event(999, "poison")))
    wire["user_data"] = {"ct": "paris", "client_ip_address": "203.0.113.7"}  # unhashed ct
    # Stored past our own guard, as by an older version whose rules Meta has since tightened.
    bridge.outbox.enqueue(
        [(PIXEL, "Purchase", "poison-999", "", time.time() + 86400, json.dumps(wire))],
        time.time(),
    )
    bridge.enqueue_many(events)
    assert all_delivered(bridge, fake_graph, 999)
    assert bridge.stats().dead == 1
    assert set(delivered_ids(fake_graph)) == {e["event_id"] for e in events}
    [letter] = bridge.outbox.dead_letters()
    assert (letter.event_id, letter.reason, letter.code, letter.subcode) == (
        "poison-999",
        "rejected",
        100,
        2804016,
    )
    assert letter.message and "hashed" in letter.message and letter.fbtrace_id
    assert len(fake_graph.requests) < 40  # bisection, not one request per event
    stats = bridge.stats()
    assert (stats.delivered, stats.dead) == (999, 1)
    assert stats.last_error is not None and stats.last_error.subcode == 2804016


def test_expired_event_is_dead_lettered_before_sending(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    old = json.dumps(make_event(1, "old", when=int(time.time()) - 6 * 86400))
    bridge.outbox.enqueue([(PIXEL, "Purchase", "old-1", "", time.time() - 10, old)], time.time())
    bridge.enqueue(make_event(2, "fresh"))
    assert all_delivered(bridge, fake_graph, 1)
    assert delivered_ids(fake_graph) == {"fresh-2": 1}
    [letter] = bridge.outbox.dead_letters()
    assert (letter.event_id, letter.reason) == ("old-1", "expired")


def test_bad_token_opens_the_circuit_with_one_clear_log_line(
    make_bridge: MakeBridge, fake_graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capi_bridge")
    bridge = make_bridge(auth_pause=60.0)
    fake_graph.add_fault(mode="code", code=190, count=1)
    bridge.enqueue(make_event(1, "auth"))
    stats = paused(bridge)  # kept, not delivered...
    assert len(fake_graph.requests) == 1
    assert stats.undelivered == 1 and [p.kind for p in stats.paused] == ["auth"]
    assert stats.last_error is not None and stats.last_error.code == 190
    # ...not hammering: the next try is auth_pause after the failure
    assert stats.paused[0].until == pytest.approx(stats.last_error.at + 60.0)
    assert stats.last_error.fbtrace_id
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "new access token" in warnings[0].getMessage()
    assert "test-token" not in caplog.text


def test_circuit_probes_again_and_recovers(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    bridge = make_bridge(auth_pause=0.3)
    fake_graph.add_fault(mode="code", code=190, count=2)
    bridge.enqueue_many(make_event(i, "probe") for i in range(50))
    assert bridge.flush(10)
    assert len(delivered_ids(fake_graph)) == 50
    assert bridge.stats().paused == ()


def test_wrong_pixel_keeps_events_and_names_the_fix(
    outbox_path: str, make_bridge: MakeBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="capi_bridge")
    with FakeGraph(pixels=["1111"]) as fake:
        bridge = make_bridge(pixel_id="2222", graph_url=fake.url, auth_pause=60.0)
        bridge.enqueue(make_event(1, "cfg"))
        stats = paused(bridge)
        assert stats.undelivered == 1 and not fake.events
        assert [p.kind for p in stats.paused] == ["config"]
    assert "pixel id" in caplog.text and "2222" in caplog.text


def test_outbox_never_holds_raw_pii_or_the_token(
    make_bridge: MakeBridge, fake_graph: FakeGraph, store_target: dict[str, Any]
) -> None:
    fake_graph.add_fault(mode="status", status=500, count=1000)  # keep payloads stored
    bridge = make_bridge(max_backoff=300.0, retry_base=100.0, probe_interval=300.0)
    bridge.enqueue_many(make_event(i, "pii") for i in range(200))
    bridge.enqueue(make_event(999, "pii"))
    bridge.flush(0.5)
    assert bridge.stats().undelivered == 201
    if "outbox_path" in store_target:  # every byte of the files
        blob = outbox_bytes(store_target["outbox_path"])  # journals included
    else:  # every row of every table, as text
        tables = ("outbox", "dead_letters", "observations", "meta", "pauses", "deliveries")
        blob = "".join(
            str(bridge.outbox.query(f"SELECT * FROM {table}")) for table in tables
        ).encode()
    assert b"sha256" not in blob and len(blob) > 100_000  # the rows really are in there
    for raw in (
        RAW_EMAIL_DOMAIN.encode() + b"\x00",
        b"@" + RAW_EMAIL_DOMAIN.encode(),
        RAW_PHONE.encode(),
        b"16505550123",
        b"Lovelace",
        b"test-token",
    ):
        assert raw not in blob, raw


def test_enqueue_never_waits_for_meta(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    """Meta holds the dispatcher's request (unanswered until the fake stops); every enqueue
    meanwhile returns, stored. Had one waited for Meta, it would return only once the request
    is answered, which the fake records, and ``requests`` would not be empty."""
    fake_graph.add_fault(mode="delay", seconds=300.0, count=1)
    bridge = make_bridge(request_timeout=50.0)
    bridge.enqueue(make_event(0, "slow"))
    assert fake_graph.wait_for(lambda g: g.pending_faults == 0, 30)  # it holds the request
    for i in range(1, 200):
        bridge.enqueue(make_event(i, "slow"))
    assert fake_graph.requests == []  # the held request is still unanswered
    assert bridge.stats().undelivered == 200
    fake_graph.release_held()
    assert bridge.flush(30) and len(delivered_ids(fake_graph)) == 200


def test_many_threads_enqueue_at_once(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    import threading

    bridge = make_bridge()  # a threaded WSGI server: one SQLite connection per thread
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(300):
                bridge.enqueue(make_event(i, f"t{n}"))
                bridge.enqueue(make_event(i, "same"))  # every thread sends these too
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and bridge.flush(20)
    got = delivered_ids(fake_graph)
    assert len(got) == 6 * 300 + 300 and max(got.values()) == 1
    assert bridge.stats().deduplicated == 5 * 300


def test_asyncio_api(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    import asyncio

    bridge = make_bridge()

    async def main() -> tuple[str, list[str], bool, int]:
        one = await bridge.aenqueue(make_event(1, "async"))
        many = await bridge.aenqueue_many([make_event(i, "async") for i in range(2, 5)])
        flushed = await bridge.aflush(10)
        stats = await bridge.astats()
        await bridge.aclose(1)
        return one, many, flushed, stats.delivered

    one, many, flushed, delivered = asyncio.run(main())
    assert (one, many) == ("async-1", ["async-2", "async-3", "async-4"])
    assert (flushed, delivered) == (True, 4)


def test_bridge_built_before_fork_delivers_from_the_child(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()  # gunicorn --preload: built in the master
    bridge.enqueue(make_event(0, "parent"))
    assert bridge.flush(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            bridge.enqueue(make_event(1, "child"))
            os.write(write, b"1" if bridge.flush(10) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert set(delivered_ids(fake_graph)) == {"parent-0", "child-1"}


def _worker(target: dict[str, Any], *args: str, lease: float = 60.0) -> subprocess.Popen[str]:
    """An app process in a subprocess, delivering in its own thread (the delivery process
    that ``auto`` starts with SQLite has tests of its own: tests/test_host_worker.py)."""
    env = dict(os.environ, CAPI_BRIDGE_LEASE_SECONDS=str(lease), CAPI_BRIDGE_DELIVERY="thread")
    if "outbox_schema" in target:
        env["CAPI_BRIDGE_OUTBOX_SCHEMA"] = target["outbox_schema"]
    return subprocess.Popen(
        [sys.executable, WORKER, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def test_sigkill_mid_batch_loses_nothing(
    make_bridge: MakeBridge, fake_graph: FakeGraph, store_target: dict[str, Any]
) -> None:
    # A local store reclaims a dead pid's lease at once; a shared one waits for it to expire
    # (longer than a request may take: request_timeout is 5 s).
    lease = 60.0 if "outbox_path" in store_target else 8.0
    fake_graph.add_fault(mode="delay", seconds=30.0, count=1)  # Meta holds the first batch
    outbox = outbox_arg(store_target)
    proc = _worker(store_target, "crash", outbox, fake_graph.url, "crash", "100000", lease=lease)
    assert proc.stdout is not None
    accepted: list[str] = []
    deadline = time.monotonic() + 20
    # Kill once the fake holds a batch (its fault is taken) and many events are accepted, well
    # within the worker's request timeout (5 s): PostgreSQL takes each event in a round trip.
    enough = 3000 if "outbox_path" in store_target else 500
    while (fake_graph.pending_faults or len(accepted) < enough) and time.monotonic() < deadline:
        accepted.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    accepted += [line.strip() for line in proc.stdout if line.strip()]
    proc.stdout.close()
    assert fake_graph.pending_faults == 0 and len(accepted) >= enough
    assert not fake_graph.events  # the held batch was never acknowledged
    # A fresh process on the same outbox takes the dead worker's rows over.
    bridge = make_bridge(lease_seconds=lease)
    assert all_delivered(bridge, fake_graph, len(set(accepted)))
    assert set(accepted) <= set(delivered_ids(fake_graph))


def test_several_processes_share_one_outbox(
    fake_graph: FakeGraph, store_target: dict[str, Any]
) -> None:
    outbox = outbox_arg(store_target)
    workers = [
        _worker(store_target, "produce", outbox, fake_graph.url, f"w{n}", "1500", "300")
        for n in range(3)
    ]
    for proc in workers:
        assert proc.wait(60) == 0  # each exits without close(): atexit flushes
        assert proc.stdout is not None
        proc.stdout.close()
    got = delivered_ids(fake_graph)
    expected = {f"w{n}-{i}" for n in range(3) for i in range(1500)}
    expected |= {f"shared-{i}" for i in range(300)}
    assert set(got) == expected
    duplicates = {k: v for k, v in got.items() if v > 1}
    assert duplicates == {}  # leases: no batch was sent twice, shared ids deduplicated


def test_recovery_after_a_long_outage_is_within_the_probe_interval(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    """Twenty failures in a row would park delivery for minutes under a doubling backoff
    (0.2 s x 2**19); with a probe at least every ``probe_interval`` the backlog drains as soon
    as the fake answers again. Retry-After is still honoured: the try after it waits that long
    even though it is longer than the probe interval."""
    bridge = make_bridge(retry_base=0.2, max_backoff=300.0, probe_interval=0.3)
    fake_graph.add_fault(mode="status", status=500, count=8)
    fake_graph.add_fault(mode="reset", count=4)
    fake_graph.add_fault(mode="status", status=429, retry_after=1.0, count=1)
    fake_graph.add_fault(mode="code", code=2, count=7)
    ids = bridge.enqueue_many(make_event(i, "outage") for i in range(3000))
    assert bridge.flush(30), bridge.stats()
    assert set(delivered_ids(fake_graph)) == set(ids) and fake_graph.pending_faults == 0
    failed = [r for r in fake_graph.requests if r["fault"] is not None]
    assert len(failed) == 20
    after_429 = next(i for i, r in enumerate(failed) if r["status"] == 429) + 1
    waited = failed[after_429]["received_at"] - failed[after_429 - 1]["received_at"]
    assert waited >= 1.0 - 0.05  # a lower bound: never earlier than Meta asked
    stats = bridge.stats()
    assert (stats.undelivered, stats.paused) == (0, ())


def test_hosts_sharing_postgres_deliver_everything_once(
    fake_graph: FakeGraph, pg_schema: str
) -> None:
    """Several processes stand in for several hosts on one database (each its own owner id;
    a shared store never reclaims leases by pid). One is SIGKILLed while Meta holds its batch;
    the others take its events over when its lease expires. Every accepted event arrives, and
    none twice: leases of live hosts are never taken."""
    target = {"outbox_url": POSTGRES_URL, "outbox_schema": pg_schema}
    fake_graph.add_fault(mode="delay", seconds=60.0, count=1)  # the victim's first batch
    victim = _worker(target, "crash", POSTGRES_URL, fake_graph.url, "victim", "100000", lease=8)
    assert victim.stdout is not None
    accepted: list[str] = []
    deadline = time.monotonic() + 20
    while (fake_graph.pending_faults or len(accepted) < 500) and time.monotonic() < deadline:
        accepted.append(victim.stdout.readline().strip())
    os.kill(victim.pid, signal.SIGKILL)  # while Meta holds its batch, within its timeout
    hosts = [
        _worker(target, "host", POSTGRES_URL, fake_graph.url, f"host{n}", "2000", lease=8)
        for n in range(3)
    ]
    victim.wait(10)
    accepted += [line.strip() for line in victim.stdout if line.strip()]
    victim.stdout.close()
    for host in hosts:
        assert host.wait(120) == 0
        assert host.stdout is not None
        host.stdout.close()
    got = delivered_ids(fake_graph)
    expected = set(accepted) | {f"host{n}-{i}" for n in range(3) for i in range(2000)}
    assert expected <= set(got)
    assert {k: v for k, v in got.items() if v > 1} == {}
    assert fake_graph.pending_faults == 0  # the victim's batch was held, never acknowledged
