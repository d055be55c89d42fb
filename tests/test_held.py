"""Events held for consent: stored but never sent until released, deleted when refused or too
old, deduplicated like any event; and the upgrade of version-1 outbox files to hold them."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers.delivery_worker import make_event

from capi_bridge.bridge import Bridge
from capi_bridge.delivery.sqlite_schema import SCHEMA_VERSION
from capi_bridge.delivery.sqlite_store import SQLiteStore as Outbox
from capi_bridge.delivery.store import State
from capi_bridge.errors import InvalidEvent
from capi_bridge.testing import FakeGraph

MakeBridge = Callable[..., Bridge]
DEAD, HELD, PENDING = State.DEAD, State.HELD, State.PENDING


@pytest.fixture
def delivery_settings(delivery_settings: Any, store_target: dict[str, Any]) -> object:
    """The Bridge tests of this module run on both stores."""
    return lambda **overrides: delivery_settings(**{**store_target, **overrides})


KEY = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_KEY = "tab_session-2_ABCDEFGH"
NOW = 1_800_000_000.0


def states(bridge: Bridge) -> list[tuple[str, int, str | None]]:
    rows = bridge.outbox.query("SELECT event_id, state, hold_key FROM outbox ORDER BY id")
    return [(e, s, h) for e, s, h in rows]


def sent_ids(fake: FakeGraph) -> list[str]:
    return [e["event_id"] for e in fake.events]


# --- Bridge -----------------------------------------------------------------------------------


def test_held_events_wait_for_release_and_keep_their_id_and_time(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    then = int(time.time()) - 600  # the visitor acted ten minutes before consenting
    assert bridge.enqueue(make_event(1, when=then), hold=KEY) == "ev-1"
    bridge.enqueue(make_event(2))
    assert bridge.flush(10)  # returns without waiting for the held event...
    assert sent_ids(fake_graph) == ["ev-2"]  # ...which was not sent
    stats = bridge.stats()
    assert (stats.held, stats.undelivered, stats.delivered) == (1, 0, 1)
    [payload] = bridge.outbox.query("SELECT payload FROM outbox WHERE state = ?", (HELD,))[0]
    assert "Customer" not in payload and len(json.loads(payload)["user_data"]["em"]) == 64

    assert bridge.release(KEY) == 1
    assert bridge.flush(10)
    [released] = [e for e in fake_graph.events if e["event_id"] == "ev-1"]
    assert released["event_time"] == then
    stats = bridge.stats()
    assert (stats.held, stats.delivered) == (0, 2)
    assert bridge.release(KEY) == 0  # released once; an unknown key releases nothing
    assert bridge.release(OTHER_KEY) == 0


def test_release_counts_one_row_per_pixel_and_enqueue_many_holds_all(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge(pixel_id="111,222")
    assert bridge.enqueue_many([make_event(1), make_event(2)], hold=KEY) == ["ev-1", "ev-2"]
    assert bridge.stats().held == 4
    assert bridge.release(KEY) == 4
    assert bridge.flush(10)
    assert sorted((e["pixel_id"], e["event_id"]) for e in fake_graph.events) == [
        ("111", "ev-1"),
        ("111", "ev-2"),
        ("222", "ev-1"),
        ("222", "ev-2"),
    ]


def test_forget_deletes_held_events_and_their_keys(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    bridge.enqueue(make_event(1), hold=KEY)
    bridge.enqueue(make_event(2), hold=OTHER_KEY)
    assert bridge.forget(KEY) == 1
    assert bridge.release(KEY) == 0  # gone: a late "grant" cannot bring it back
    assert states(bridge) == [("ev-2", HELD, OTHER_KEY)]
    assert bridge.flush(10) and fake_graph.events == []
    bridge.enqueue(make_event(1))  # its key went with it: the same event is new again
    assert bridge.flush(10) and sent_ids(fake_graph) == ["ev-1"]


def test_a_held_event_takes_its_key(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    bridge = make_bridge()
    bridge.enqueue(make_event(1), hold=KEY)
    bridge.enqueue(make_event(1))  # a repeat, held or not, is deduplicated
    bridge.enqueue(make_event(1), hold=OTHER_KEY)
    assert states(bridge) == [("ev-1", HELD, KEY)]
    assert bridge.stats().deduplicated == 2
    assert bridge.flush(10) and fake_graph.events == []


def test_held_events_are_validated_and_hashed_first(make_bridge: MakeBridge) -> None:
    bridge = make_bridge()
    bad = make_event(1)
    del bad["action_source"]
    with pytest.raises(InvalidEvent, match="action_source"):
        bridge.enqueue(bad, hold=KEY)
    assert states(bridge) == []
    for key in ("", "x" * 129, 42):
        with pytest.raises(ValueError, match="hold"):
            bridge.enqueue(make_event(2), hold=key)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hold_key"):
        bridge.release("")
    assert states(bridge) == []


def test_release_from_another_bridge_on_the_same_file(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    web = make_bridge()  # the worker that took the events
    web.enqueue(make_event(1), hold=KEY)
    web.enqueue(make_event(2), hold=KEY)
    web.close(timeout=0)
    other = make_bridge()  # another worker process gets the consent message
    assert other.stats().held == 2
    assert other.release(KEY) == 2
    assert other.flush(10)
    assert sorted(sent_ids(fake_graph)) == ["ev-1", "ev-2"]


def test_held_events_expire_after_held_ttl(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    web = make_bridge(held_ttl=3600)
    web.enqueue(make_event(1), hold=KEY)
    web.enqueue(make_event(2), hold=OTHER_KEY)
    web.close(timeout=0)
    with web.outbox.write() as tx:  # two hours pass for KEY's event
        tx.execute("UPDATE outbox SET created = created - 7200 WHERE hold_key = ?", (KEY,))
    later = make_bridge(held_ttl=3600)
    later.enqueue(make_event(3))
    assert later.flush(10)  # its dispatcher's first pass drops what waited too long
    stats = later.stats()
    assert (stats.held, stats.held_expired) == (1, 1)
    assert later.release(KEY) == 0 and later.release(OTHER_KEY) == 1
    assert later.flush(10)
    assert sorted(sent_ids(fake_graph)) == ["ev-2", "ev-3"]  # never the expired one


def test_a_release_past_metas_window_is_dead_lettered_as_expired(
    make_bridge: MakeBridge, fake_graph: FakeGraph
) -> None:
    bridge = make_bridge()
    almost_week_old = int(time.time()) - 7 * 86400 + 30
    bridge.enqueue(make_event(1, when=almost_week_old), hold=KEY)
    assert bridge.release(KEY) == 1
    assert bridge.flush(10)
    [letter] = bridge.outbox.dead_letters()
    assert (letter.event_id, letter.reason) == ("ev-1", "expired")
    assert fake_graph.events == []


def test_async_release_and_forget(make_bridge: MakeBridge, fake_graph: FakeGraph) -> None:
    bridge = make_bridge()

    async def consent_flow() -> tuple[int, int]:
        await bridge.aenqueue(make_event(1), hold=KEY)
        await bridge.aenqueue_many([make_event(2)], hold=OTHER_KEY)
        return await bridge.arelease(KEY), await bridge.aforget(OTHER_KEY)

    assert asyncio.run(consent_flow()) == (1, 1)
    assert bridge.flush(10) and sent_ids(fake_graph) == ["ev-1"]


# --- the outbox on its own ----------------------------------------------------------------------


def row(event_id: str) -> tuple[str, str, str, str, float, str]:
    return ("111", "Purchase", event_id, "", NOW + 86400, '{"event_id": "x"}')


def test_held_rows_are_never_ingested_nor_claimed(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    assert outbox.enqueue([row("a"), row("b")], NOW, hold=KEY) == 2
    assert outbox.enqueue([row("c")], NOW) == 1
    outbox.prepare()
    batch = outbox.claim("111", "", owner="h:1:a", now=NOW, limit=10, lease=60, linger=0)
    assert [r.event_id for r in batch.rows] == ["c"]
    outbox.delivered([r.id for r in batch.rows], "111", "h:1:a")
    assert not outbox.pending("", outbox.mark())  # held rows are not waited for
    assert outbox.release(KEY, NOW + 5) == 2
    assert outbox.pending("", outbox.mark())
    released = outbox.query("SELECT state, due, hold_key FROM outbox WHERE event_id IN ('a','b')")
    assert released == [(PENDING, NOW + 5, None)] * 2


def test_expiry_and_forget_in_small_transactions(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue([row(f"old{i}") for i in range(3)], NOW - 100, hold=KEY)
    outbox.enqueue([row("young")], NOW, hold=KEY)
    assert outbox.expire_held(NOW - 50) == 3
    assert outbox.forget(KEY) == 1
    stats = outbox.stats(NOW)
    assert (stats.held, stats.held_expired) == (0, 3)  # forgotten rows are not "expired"


def test_dropping_the_newest_held_row_does_not_strand_later_events(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue([row("a")], NOW)
    outbox.enqueue([row("held")], NOW, hold=KEY)  # the newest row...
    outbox.prepare()
    assert outbox.ingested() == outbox.mark()  # ...is at the ingestion cursor
    assert outbox.forget(KEY) == 1
    outbox.enqueue([row("b")], NOW)  # SQLite reuses the dropped row's id
    outbox.prepare()
    batch = outbox.claim("111", "", owner="h:1:a", now=NOW, limit=10, lease=60, linger=0)
    assert [r.event_id for r in batch.rows] == ["a", "b"]


def test_retrying_a_dead_letter_does_not_send_a_held_event_with_its_key(outbox_path: str) -> None:
    outbox = Outbox(outbox_path)
    outbox.enqueue([row("a"), row("b")], NOW)
    outbox.prepare()
    first = outbox.claim("111", "", owner="h:1:a", now=NOW, limit=1, lease=60, linger=0)
    outbox.dead_letter([first.rows[0].id], "h:1:a", reason="rejected", now=NOW, message="no")
    assert outbox.forget_settled(NOW + 1) == 1  # the dead key is past the dedup window
    assert outbox.enqueue([row("a")], NOW + 2, hold=KEY) == 1  # the same event, now held
    [letter] = outbox.dead_letters()
    outbox.retry_dead([letter.id], NOW + 3)
    still = outbox.query("SELECT state, hold_key FROM outbox WHERE event_id = 'a'")
    assert still == [(HELD, KEY)]


# --- upgrading a version-1 file --------------------------------------------------------------

SCHEMA_V1 = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY, pixel_id TEXT NOT NULL, event_name TEXT NOT NULL,
    event_id TEXT NOT NULL, test_code TEXT NOT NULL, expires REAL NOT NULL,
    created REAL NOT NULL, due REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until REAL, payload TEXT,
    UNIQUE (pixel_id, event_name, event_id)
);
CREATE INDEX outbox_ready ON outbox (pixel_id, test_code, due) WHERE state = 0;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY, pixel_id TEXT NOT NULL, event_name TEXT NOT NULL,
    event_id TEXT NOT NULL, test_code TEXT NOT NULL, expires REAL NOT NULL,
    created REAL NOT NULL, failed_at REAL NOT NULL, reason TEXT NOT NULL, message TEXT,
    code INTEGER, subcode INTEGER, fbtrace_id TEXT, payload TEXT NOT NULL
);
CREATE TABLE pauses (pixel_id TEXT PRIMARY KEY, until REAL NOT NULL, kind TEXT NOT NULL,
    failures INTEGER NOT NULL, prober TEXT);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO counters VALUES ('delivered', 7), ('deduplicated', 3);
INSERT INTO meta VALUES ('ingested', '2');
INSERT INTO outbox (pixel_id, event_name, event_id, test_code, expires, created, due, state,
    payload) VALUES ('111', 'Purchase', 'sent', '', 1e10, 1, 1, 1, NULL),
    ('111', 'Purchase', 'waiting', '', 1e10, 1, 1, 0, '{"event_id": "waiting"}');
PRAGMA user_version = 1;
"""


def make_v1_outbox(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA_V1)
    conn.close()


def test_a_version_1_outbox_is_upgraded_in_place(outbox_path: str) -> None:
    make_v1_outbox(outbox_path)
    outbox = Outbox(outbox_path)
    assert outbox.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    columns = [r[1] for r in outbox.query("PRAGMA table_info(outbox)")]
    assert {"hold_key", "delivery", "obs_channel", "obs_preview"} <= set(columns)  # v2, v3
    assert outbox.query("SELECT name FROM sqlite_master WHERE name = 'outbox_held'")
    stats = outbox.stats(NOW)  # the rows and counters of version 1 are kept
    assert (stats.pending, stats.delivered, stats.deduplicated, stats.held) == (1, 7, 3, 0)
    assert outbox.enqueue([row("sent")], NOW, hold=KEY) == 0  # its keys still deduplicate
    assert outbox.enqueue([row("new")], NOW, hold=KEY) == 1
    assert outbox.release(KEY, NOW) == 1
    batch = outbox.claim("111", "", owner="h:1:a", now=NOW, limit=10, lease=60, linger=0)
    assert sorted(r.event_id for r in batch.rows) == ["new", "waiting"]
    assert Outbox(outbox_path).query("PRAGMA user_version") == [(SCHEMA_VERSION,)]  # once


def test_readers_upgrade_outboxes_but_leave_other_files_alone(
    outbox_path: str, tmp_path: object
) -> None:
    make_v1_outbox(outbox_path)
    assert Outbox(outbox_path, create=False).stats(NOW).held == 0  # `outbox stats`
    other = os.path.join(str(tmp_path), "app.sqlite3")
    sqlite3.connect(other).close()
    Outbox(other, create=False)  # a mistyped --path: not turned into an outbox
    assert sqlite3.connect(other).execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_dead_rows_and_held_rows_do_not_mix(outbox_path: str) -> None:
    """A dead row's key blocks a held copy, like any settled key within the dedup window."""
    outbox = Outbox(outbox_path)
    outbox.enqueue([row("a"), row("b")], NOW)
    outbox.prepare()
    first = outbox.claim("111", "", owner="h:1:a", now=NOW, limit=1, lease=60, linger=0)
    outbox.dead_letter([first.rows[0].id], "h:1:a", reason="rejected", now=NOW, message="no")
    assert outbox.enqueue([row("a")], NOW, hold=KEY) == 0
    assert outbox.query("SELECT state FROM outbox WHERE event_id = 'a'") == [(DEAD,)]
