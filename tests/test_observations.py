"""Observations: what is kept of each event (key bits, masked previews, no raw data), where it is
kept (riding in the outbox row until ingestion files it, so enqueue pays no second write), and
for how long; plus the in-place upgrade of version-2 outbox files."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from helpers.delivery_worker import RAW_EMAIL_DOMAIN, RAW_PHONE, make_event
from helpers.stores import outbox_bytes

from capi_bridge.bridge import Bridge
from capi_bridge.delivery.records import Seen
from capi_bridge.delivery.sqlite_schema import SCHEMA_VERSION
from capi_bridge.delivery.sqlite_store import SQLiteStore as Outbox
from capi_bridge.events import graph_event
from capi_bridge.observations import (
    EM,
    EXTERNAL_ID,
    FBC,
    FBP,
    IP,
    OTHER,
    PH,
    SERVER,
    UA,
    Observation,
    ObservationBuffer,
    Origin,
    describe,
    key_labels,
    mask_ip,
    previews,
)
from capi_bridge.testing import FakeGraph

MakeBridge = Callable[..., Bridge]
NOW = 1_800_000_000.0


def seen(bridge: Bridge) -> list[Seen]:
    bridge.write_observations()
    return bridge.outbox.recent(1000)[::-1]


# --- what is kept -----------------------------------------------------------------------------


def test_a_hashed_event_is_described_by_bits_and_masked_previews() -> None:
    wire = graph_event(make_event(7))
    clicked_ms = int(wire["event_time"] - 3 * 3600) * 1000
    wire["user_data"]["fbc"] = f"fb.1.{clicked_ms}.IwAR2xyzClickId"
    d = describe(wire["user_data"], wire["event_time"])
    assert d.keys == EM | PH | EXTERNAL_ID | FBP | FBC | IP | UA | OTHER  # fn, ln: "other"
    assert key_labels(d.keys) == ["em", "ph", "external_id", "fbp", "fbc", "ip", "ua", "other"]
    shown = previews(d.preview)
    assert shown == {
        "em": f"sha256:{wire['user_data']['em'][:4]}…",
        "ph": f"sha256:{wire['user_data']['ph'][:4]}…",
        "external_id": f"sha256:{wire['user_data']['external_id'][:4]}…",
        "fbp": "fb.1.17000…7890",
        "fbc": f"fb.1.{str(clicked_ms)[:5]}…ckId",
        "ip": "203.0.x.x",
        "ua": "Mozilla/5.0 (X11; Li…",
    }
    assert d.fbp_hash == hashlib.sha256(b"fb.1.1700000000000.1234567890").hexdigest()[:16]
    assert d.fbc_age == 3 * 3600
    for raw in ("1234567890", "IwAR2xyz", "203.0.113.7", wire["user_data"]["em"]):
        assert raw not in d.preview


def test_values_that_are_not_hashes_are_never_shown() -> None:
    d = describe({"em": "jane@example.com", "ph": ["16505550123"]}, NOW)
    assert d.keys == EM | PH
    assert previews(d.preview) == {"em": "not hashed", "ph": "not hashed"}
    assert "jane" not in d.preview and "1650" not in d.preview


def test_ip_masks() -> None:
    assert mask_ip("81.2.69.142") == "81.2.x.x"
    assert mask_ip("2001:db8:85a3::8a2e:370:7334") == "2001:db8:…"
    assert mask_ip("junk") == "?"


def test_an_event_without_keys() -> None:
    d = describe({}, NOW)
    assert (d.keys, d.fbp_hash, d.fbc_age, d.preview) == (0, None, None, "")


# --- where and when it is kept ----------------------------------------------------------------


def test_enqueue_carries_the_observation_and_ingestion_files_it(make_bridge: MakeBridge) -> None:
    bridge = make_bridge(pixel_id="111,222", inspector=True)
    bridge._closed = True  # no dispatcher: ingestion is run by hand below
    bridge.enqueue(make_event(1), origin=Origin("browser", pixel_loaded=True))
    assert bridge.outbox.query("SELECT count(*) FROM observations") == [(0,)]
    carried = bridge.outbox.query("SELECT obs_channel, obs_loaded, obs_twin, obs_keys FROM outbox")
    assert carried == [(1, 1, None, 255)] * 2  # one row per pixel, in the same INSERT
    assert bridge.outbox.prepare() == 2
    rows = [s.row for s in bridge.outbox.recent(10)]
    assert sorted(r.pixel_id for r in rows) == ["111", "222"]
    assert {(r.event_id, r.channel, r.pixel_loaded, r.twin, r.keys) for r in rows} == {
        ("ev-1", 1, 1, None, 255)
    }
    assert "fbp=fb.1.17000…7890" in rows[0].preview
    # filed once: the rows no longer carry it
    assert bridge.outbox.query("SELECT DISTINCT obs_channel, obs_preview FROM outbox") == [
        (None, None)
    ]
    assert bridge.outbox.prepare() == 0 and len(bridge.outbox.recent(9)) == 2


def test_previews_are_made_only_while_the_inspector_is_on(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()  # inspector off: what diagnostics need, and no masked values
    bridge._closed = True
    bridge.enqueue(make_event(1))
    assert bridge.outbox.recent(1) == []  # not filed yet
    bridge.outbox.prepare()
    [seen] = bridge.outbox.recent(1)
    assert seen.row.keys == 255 and seen.row.preview == ""
    assert seen.row.fbp_hash == hashlib.sha256(b"fb.1.1700000000000.1234567890").hexdigest()[:16]


def test_a_duplicate_is_observed_at_once(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    bridge._closed = True
    bridge.enqueue(make_event(1))
    bridge.enqueue(make_event(1), origin=Origin("browser", pixel_loaded=False))
    assert bridge.stats().deduplicated == 1
    [dup] = bridge.outbox.recent(10)  # the first still rides in its row
    assert (dup.row.event_id, dup.row.channel, dup.row.pixel_loaded) == ("ev-1", 1, 0)
    bridge.enqueue_many([make_event(1), make_event(2)], origin=Origin("browser"))
    bridge.write_observations()
    channels = sorted((s.row.event_id, s.row.channel) for s in bridge.outbox.recent(10))
    assert channels == [("ev-1", 1), ("ev-1", 1), ("ev-1", SERVER), ("ev-2", 1)]


def test_held_events_are_observed_only_once_released(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    bridge._closed = True
    bridge.enqueue(make_event(1), hold="tab-session-0001")
    bridge.enqueue(make_event(2), hold="tab-session-0002")
    bridge.enqueue(make_event(2), hold="tab-session-0002")  # a held duplicate: not filed
    assert seen(bridge) == []
    assert bridge.forget("tab-session-0001") == 1
    assert bridge.release("tab-session-0002") == 1
    assert [s.row.event_id for s in seen(bridge)] == ["ev-2"]


def test_no_raw_customer_data_in_observations(
    make_bridge: MakeBridge, fake_graph: FakeGraph, outbox_path: str
) -> None:
    bridge = make_bridge()
    bridge.enqueue_many(make_event(i, "pii") for i in range(50))
    assert bridge.flush(10)
    bridge.close()
    dump = "\n".join(Outbox(outbox_path).conn().iterdump())
    observed = [line for line in dump.splitlines() if "observations" in line]
    assert len(observed) > 50
    text = "\n".join(observed)
    for raw in (
        RAW_EMAIL_DOMAIN,
        RAW_PHONE,
        "16505550123",
        "Lovelace",
        "203.0.113.7",
        "test-token",
    ):
        assert raw not in text
    assert "fb.1.1700000000000.1234567890" not in text  # fbp: masked, and hashed apart
    blob = outbox_bytes(outbox_path)
    assert RAW_EMAIL_DOMAIN.encode() + b"\x00" not in blob


def test_twins_noted_at_render_are_written_by_the_dispatcher(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    row = Observation(
        time.time(), "1234567890", "Purchase", "ev-twin", 3, None, None, 8, None, None, ""
    )
    bridge.observe_later([row])  # no SQLite here; it wakes this process's dispatcher
    bridge.close()  # its last pass, or close itself, writes what is noted
    assert [s.row.event_id for s in Outbox(bridge.outbox.location).recent(5)] == ["ev-twin"]


def twin(event_id: str) -> Observation:
    return Observation(
        time.time(), "1234567890", "Purchase", event_id, 3, None, None, 8, None, None, ""
    )


def test_a_reader_waits_for_twins_another_thread_is_writing() -> None:
    """The inspector writes the buffer before reading the store: rows the dispatcher has taken
    out but not yet written must be in the store once that returns (the buffer once looked
    empty then, and the inspector showed a server event without its twin)."""
    buffer = ObservationBuffer()
    written: list[str] = []
    inside, release, reading = threading.Event(), threading.Event(), threading.Event()

    def slow_write(rows: list[Observation]) -> None:  # the dispatcher's write, held mid-way
        inside.set()
        release.wait(30)
        written.extend(r.event_id for r in rows)

    seen: list[list[str]] = []

    def read() -> None:
        reading.set()
        buffer.write_to(lambda rows: written.extend(r.event_id for r in rows))
        seen.append(list(written))

    buffer.add([twin("ev-1")])
    dispatcher = threading.Thread(target=buffer.write_to, args=(slow_write,))
    dispatcher.start()
    assert inside.wait(30)
    reader = threading.Thread(target=read)
    reader.start()
    assert reading.wait(30)
    release.set()
    reader.join(30)
    dispatcher.join(30)
    assert seen == [["ev-1"]]  # the reader returned after ev-1 was written, not before


def test_twins_whose_write_failed_are_kept_for_the_next_pass() -> None:
    buffer = ObservationBuffer()
    buffer.add([twin("ev-1")])

    def unavailable(rows: list[Observation]) -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        buffer.write_to(unavailable)
    buffer.add([twin("ev-2")])
    written: list[str] = []
    assert buffer.write_to(lambda rows: written.extend(r.event_id for r in rows)) == 2
    assert written == ["ev-1", "ev-2"] and len(buffer) == 0


def test_old_observations_and_replies_are_pruned_by_the_dispatcher(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    old = time.time() - 8 * 86400
    stale = [
        Observation(old + i, "1234567890", "PageView", f"old-{i}", 1, 1, None, 8, None, None, "")
        for i in range(3)
    ]
    bridge.outbox.observe(stale)
    with bridge.outbox.write() as c:
        c.execute(
            "INSERT INTO deliveries (at, pixel_id, events, events_received) VALUES (?, '1', 1, 1)",
            (old,),
        )
    bridge.enqueue(make_event(1))
    assert bridge.flush(10)
    bridge.close()  # joins the dispatcher: its pass, housekeeping included, is over
    outbox = Outbox(bridge.outbox.location)
    assert [s.row.event_id for s in outbox.recent(10)] == ["ev-1"]
    assert outbox.query("SELECT count(*) FROM deliveries") == [(1,)]  # the new batch's reply


def test_the_window_start_is_found_by_bisecting_ids(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    rows = [
        Observation(NOW + i, "1", "PageView", f"e{i}", 1, None, None, 0, None, None, "")
        for i in range(100)
    ]
    outbox.observe(rows)
    with outbox.write() as c:  # gaps, as pruning and nothing else leaves
        c.execute("DELETE FROM observations WHERE id % 7 = 0 OR id < 10")
    ids = dict(outbox.query("SELECT at, id FROM observations"))
    for since in (NOW - 5, NOW + 9, NOW + 10.5, NOW + 41, NOW + 42, NOW + 99, NOW + 500):
        bound = outbox.first_id_since(since)
        expected = min((i for at, i in ids.items() if at >= since), default=None)
        if expected is None:
            assert bound > max(ids.values())
        else:  # no row between the bound and the first recent row
            assert bound <= expected
            assert all(i < bound for at, i in ids.items() if at < since)
    assert outbox.prune(NOW + 50) == len([a for a in ids if a < NOW + 50])


# --- upgrade ----------------------------------------------------------------------------------

SCHEMA_V2 = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY, pixel_id TEXT NOT NULL, event_name TEXT NOT NULL,
    event_id TEXT NOT NULL, test_code TEXT NOT NULL, expires REAL NOT NULL, created REAL NOT NULL,
    due REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT, lease_until REAL, payload TEXT, hold_key TEXT,
    UNIQUE (pixel_id, event_name, event_id));
CREATE INDEX outbox_ready ON outbox (pixel_id, test_code, due) WHERE state = 0;
CREATE INDEX outbox_held ON outbox (hold_key) WHERE state = 4;
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, pixel_id TEXT NOT NULL,
    event_name TEXT NOT NULL, event_id TEXT NOT NULL, test_code TEXT NOT NULL,
    expires REAL NOT NULL, created REAL NOT NULL, failed_at REAL NOT NULL, reason TEXT NOT NULL,
    message TEXT, code INTEGER, subcode INTEGER, fbtrace_id TEXT, payload TEXT NOT NULL);
CREATE TABLE pauses (pixel_id TEXT PRIMARY KEY, until REAL NOT NULL, kind TEXT NOT NULL,
    failures INTEGER NOT NULL, prober TEXT);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO counters VALUES ('delivered', 4), ('deduplicated', 1), ('held_expired', 0);
INSERT INTO meta VALUES ('ingested', '1');
INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires, created, due, state,
    payload) VALUES ('1234567890', 'Purchase', 'ev-1', '', 1e10, 1, 1, 1, NULL),
    ('1234567890', 'Purchase', 'waiting', '', 1e10, 1, 1, 3, '{"event_id": "waiting"}');
PRAGMA user_version = 2;
"""


def test_a_version_2_outbox_is_upgraded_in_place(outbox_path: str, make_bridge: MakeBridge) -> None:
    conn = sqlite3.connect(outbox_path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA_V2)
    conn.close()
    bridge = make_bridge()
    bridge._closed = True
    assert bridge.outbox.query("PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(6,)]
    assert bridge.stats().delivered == 4 and bridge.stats().pending == 1  # rows kept
    # version 6: rows up to the old ingestion cursor count as observed; no claims yet
    assert bridge.outbox.query("SELECT value FROM meta WHERE key = 'observed'") == [("1",)]
    assert bridge.outbox.query("SELECT count(*) FROM claims") == [(0,)]
    assert bridge.enqueue(make_event(1)) == "ev-1"  # its key still deduplicates...
    bridge.enqueue(make_event(2))
    assert bridge.stats().deduplicated == 2
    assert bridge.outbox.prepare() == 2  # ...and the old fresh row is ingested unobserved
    assert sorted(s.row.event_id for s in seen(bridge)) == ["ev-1", "ev-2"]
