"""This machine's clock against Meta's, read from the Graph API's ``Date`` header: measured on
every answer over real HTTP (the fake Graph server sends ``Date`` and can run its clock apart),
warned about once, and shown by ``capi-bridge check``, ``Bridge.stats()``, ``capi-bridge outbox
stats`` and the inspector."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from helpers.delivery_worker import make_event

from capi_bridge.bridge import Bridge
from capi_bridge.cli import main
from capi_bridge.clock import SKEW_LIMIT, ClockSkew, ClockWatch, measure
from capi_bridge.events import graph_event
from capi_bridge.graph import GraphClient, GraphError
from capi_bridge.testing import FakeGraph

DAY = 86400.0
MakeBridge = Callable[..., Bridge]


def test_a_date_header_gives_meta_s_time_minus_ours() -> None:
    date = email.utils.formatdate(1_800_000_000, usegmt=True)
    assert measure(date, 1_800_000_000 - 400 * DAY) == 400 * DAY  # ours is behind
    assert measure(date, 1_800_000_090) == -90  # ours is ahead
    for unusable in (None, "", "yesterday", "Tue, 15 Nov 1994 08:12:31"):  # no zone: not HTTP
        assert measure(unusable, 1_800_000_000) is None


@pytest.mark.parametrize(
    ("seconds", "off", "text"),
    [
        (0.4, False, "within 1 s of Meta's"),
        (-SKEW_LIMIT, False, "within 300 s of Meta's"),
        (SKEW_LIMIT + 1, True, "5 min behind Meta's"),
        (-2 * 3600, True, "2.0 h ahead of Meta's"),
        (400 * DAY, True, "400 days behind Meta's"),
    ],
)
def test_readings_are_described_for_people(seconds: float, off: bool, text: str) -> None:
    reading = ClockSkew(seconds, 0.0, "web-1")
    assert (reading.off, reading.describe()) == (off, text)
    assert ClockSkew.decode(reading.encode()) == reading


def test_a_watch_warns_once_and_passes_on_only_readings_that_moved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="capi_bridge.clock")
    now = [1_800_000_000.0]
    passed: list[float] = []
    watch = ClockWatch(lambda r: passed.append(round(r.seconds)), clock=lambda: now[0])

    def answer(meta_ahead: float) -> None:
        watch.observe(email.utils.formatdate(now[0] + meta_ahead, usegmt=True))

    answer(400 * DAY)
    answer(400 * DAY)  # the same reading: no second warning, nothing passed on
    now[0] += 60
    answer(400 * DAY + 40)  # moved 40 s: passed on, still no second warning
    answer(0)  # NTP fixed it
    answer(0)
    assert passed == [400 * DAY, 400 * DAY + 40, 0]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2
    assert lines[0][0] == "WARNING" and "400 days behind Meta's" in lines[0][1]
    assert "NTP" in lines[0][1]
    assert lines[1] == ("INFO", "capi-bridge: this machine's clock is within 1 s of Meta's again")
    assert watch.latest is not None and not watch.latest.off


def test_every_answer_of_the_fake_carries_its_date_over_http() -> None:
    with FakeGraph(clock_skew=-3 * DAY) as fake, GraphClient("test-token", graph_url=fake.url) as g:
        g.send("1234567890", [graph_event(make_event(1))])  # taken: our time is its future
        reading = g.clock_watch.latest
        assert reading is not None and reading.off
        assert abs(reading.seconds + 3 * DAY) < 5  # one-second Date, plus the round trip
        fake.clock_skew = 0.0
        g.send("1234567890", [graph_event(make_event(2))])
        assert g.clock_watch.latest is not None and not g.clock_watch.latest.off
        with GraphClient("wrong-token", graph_url=fake.url) as refused:  # an error answer...
            with pytest.raises(GraphError) as error:
                refused.send("1234567890", [graph_event(make_event(3))])
            assert error.value.code == 190
            assert refused.clock_watch.latest is not None  # ...has a Date too


@pytest.fixture
def delivery_settings(delivery_settings: Any, store_target: dict[str, Any]) -> object:
    """The reading is kept in the outbox for every process: both stores."""
    return lambda **overrides: delivery_settings(**{**store_target, **overrides})


def test_a_clock_400_days_behind_is_warned_once_and_in_stats(
    make_bridge: MakeBridge,
    fake_graph: FakeGraph,
    store_target: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.WARNING, logger="capi_bridge")
    fake_graph.clock_skew = 400 * DAY  # Meta's clock: our events look 400 days old to it
    bridge = make_bridge()
    assert bridge.stats().clock is None  # nothing answered yet
    bridge.enqueue(make_event(1, "late"))
    bridge.enqueue(make_event(2, "late"))
    assert bridge.flush(10)  # settled: dead-lettered by Meta as too old
    stats = bridge.stats()
    assert stats.dead == 2 and stats.clock is not None and stats.clock.off
    assert stats.clock.describe() == "400 days behind Meta's"
    clock_lines = [r.getMessage() for r in caplog.records if r.name == "capi_bridge.clock"]
    assert len(clock_lines) == 1 and "400 days behind" in clock_lines[0]
    # another process, the operator's, reads it from the outbox
    where = (
        ["--url", store_target["outbox_url"], "--schema", store_target["outbox_schema"]]
        if "outbox_url" in store_target
        else ["--path", store_target["outbox_path"]]
    )
    assert main(["outbox", "stats", *where]) == 0
    out = capsys.readouterr().out
    assert "is 400 days behind Meta's" in out and "Fix the clock" in out
    assert main(["outbox", "stats", "--json", *where]) == 0
    shown = json.loads(capsys.readouterr().out)["clock"]
    assert round(shown["seconds"] / DAY) == 400 and shown["host"]


def test_check_shows_the_clock(tmp_path: Any) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}

    def check(fake: FakeGraph) -> subprocess.CompletedProcess[str]:
        env = {
            **base,
            "CAPI_BRIDGE_PIXEL_ID": "1234567890",
            "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
            "CAPI_BRIDGE_GRAPH_URL": fake.url,
            "CAPI_BRIDGE_TEST_EVENT_CODE": "TEST1",
        }
        command = [sys.executable, "-m", "capi_bridge.cli", "check"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    with FakeGraph() as fake:
        fine = check(fake)
        fake.clock_skew = -2 * DAY  # this machine's clock runs two days ahead
        ahead = check(fake)
    assert fine.returncode == 0 and "Clock: this machine's clock is within" in fine.stdout
    assert ahead.returncode == 0  # Meta took the event...
    assert "WARNING: this machine's clock is 2 days ahead of Meta's" in ahead.stderr  # ...but
    assert ahead.stderr.count("2 days ahead") == 1  # said once, not also logged
