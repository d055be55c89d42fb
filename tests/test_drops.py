"""Counts of the browser events the mirror did not store: why a user agent is ignored, and
that anonymous input cannot grow memory or disk without bound (distinct keys capped per process
and per hour, old hours deleted), on both real stores (SQLite file, PostgreSQL schema) and with
an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers.stores import read_only

from capi_bridge.delivery import open_store
from capi_bridge.delivery.store import Store
from capi_bridge.drops import (
    FLUSH_SECONDS,
    MAX_KEYS_PER_HOUR,
    MAX_PENDING,
    OTHER,
    Drop,
    DropTally,
    classify_agent,
    read,
)
from capi_bridge.observations import RETENTION

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(store_target: dict[str, Any]) -> Iterator[Store]:
    url = store_target.get("outbox_url") or "sqlite:///" + store_target["outbox_path"]
    store = open_store(url, schema=store_target.get("outbox_schema", "capi_bridge"))
    yield store
    store.close()


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
         ("crawler", "googlebot")),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
         ("crawler", "facebookexternalhit")),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/156.0 Safari/537.36",
         ("bot", "headlesschrome")),
        ("curl/8.5.0", ("bot", "curl")),
        ("python-httpx/0.28", ("bot", "python")),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36", None),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Safari/604.1", None),
        ("", None),
        (None, None),
    ],
)
def test_user_agents_are_told_apart(agent: str | None, expected: tuple[str, str] | None) -> None:
    assert classify_agent(agent) == expected


def test_counts_are_written_at_most_every_few_seconds_and_read_back(outbox: Store) -> None:
    clock = Clock()
    tally = DropTally(lambda: outbox, clock=clock)
    tally.add([Drop("PageView", "bot", "headlesschrome")] * 3)
    assert read(outbox, 0, T0 + 1) == []  # held in memory for now
    clock.now += FLUSH_SECONDS
    tally.add([Drop("Lead", "unknown_event")])
    found = [(c.event_name, c.reason, c.detail, c.count) for c in read(outbox, 0, clock.now)]
    assert found == [("PageView", "bot", "headlesschrome", 3), ("Lead", "unknown_event", "", 1)]
    # a window reads the hours it overlaps
    assert read(outbox, T0 + 7200, T0 + 9000) == []


def test_memory_holds_a_bounded_number_of_keys(outbox: Store) -> None:
    tally = DropTally(lambda: outbox, clock=Clock())
    tally.add(Drop(f"Custom{i}", "unknown_event") for i in range(5 * MAX_PENDING))
    assert len(tally._pending) <= MAX_PENDING + 1
    tally.flush()
    counts = read(outbox, 0, T0 + 1)
    assert sum(c.count for c in counts) == 5 * MAX_PENDING  # nothing lost, only folded
    other = next(c for c in counts if c.event_name == OTHER)
    assert other.count >= 4 * MAX_PENDING


def test_an_hour_holds_a_bounded_number_of_keys_across_processes(outbox: Store) -> None:
    """Each process holds its own keys: their writes still stay within the hour's cap."""
    for process in range(4):
        tally = DropTally(lambda: outbox, clock=Clock())
        tally.add(Drop(f"P{process}Custom{i}", "unknown_event") for i in range(MAX_PENDING))
        tally.flush()
    (rows,) = outbox.query("SELECT count(*) FROM dropped")
    assert rows[0] <= MAX_KEYS_PER_HOUR + 1
    assert sum(c.count for c in read(outbox, 0, T0 + 1)) == 4 * MAX_PENDING


def test_old_hours_are_deleted(outbox: Store) -> None:
    clock = Clock()
    tally = DropTally(lambda: outbox, clock=clock)
    tally.add([Drop("PageView", "crawler", "googlebot")])
    tally.flush()
    clock.now += RETENTION + 3600
    tally.add([Drop("PageView", "crawler", "bingbot")])
    tally.flush()
    [(rows,)] = outbox.query("SELECT count(*) FROM dropped")
    assert rows == 1
    assert [c.detail for c in read(outbox, 0, clock.now)] == ["bingbot"]


def test_a_fresh_outbox_has_no_counts(outbox: Store) -> None:
    assert read(outbox, 0, T0) == []


def test_counts_wait_in_memory_while_the_outbox_cannot_be_written(
    outbox_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = open_store("sqlite:///" + outbox_path)
    tally = DropTally(lambda: outbox, clock=Clock())
    tally.add([Drop("Purchase", "refused", "custom_data.currency is required")] * 2)
    with read_only(outbox_path):
        tally.flush()
    assert "not written yet" in caplog.text
    tally.add([Drop("Purchase", "refused", "custom_data.currency is required")])
    tally.flush()
    [count] = read(outbox, 0, T0 + 1)
    assert count.count == 3
    outbox.close()
