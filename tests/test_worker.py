"""``CAPI_BRIDGE_DELIVERY=worker``: app processes only store; ``capi-bridge worker`` delivers.

Real processes: the worker is the installed command in a subprocess, on the same SQLite file
or PostgreSQL schema as the app, sending to the fake Graph server; waits are conditions with
deadlines (a line printed, ``flush`` returning), never sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.delivery_worker import make_event

from capi_bridge.bridge import Bridge
from capi_bridge.cli_worker import serve
from capi_bridge.errors import ConfigError
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph


def worker_env(fake_graph: FakeGraph, target: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    env |= {
        "CAPI_BRIDGE_PIXEL_ID": "1234567890",
        "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
        "CAPI_BRIDGE_GRAPH_URL": fake_graph.url,
        "CAPI_BRIDGE_DELIVERY": "worker",  # as the app's: the worker delivers all the same
        "CAPI_BRIDGE_LINGER": "0.02",
    }
    env |= {f"CAPI_BRIDGE_{key.upper()}": str(value) for key, value in target.items()}
    return env


@pytest.fixture
def start_worker(fake_graph: FakeGraph) -> Iterator[Callable[[dict[str, Any]], Any]]:
    procs: list[subprocess.Popen[str]] = []

    def start(target: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "capi_bridge.cli", "worker"],
            env=worker_env(fake_graph, target),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it runs (or exits)
        assert line.startswith("capi-bridge worker: delivering events stored in"), line
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_the_app_only_stores_and_the_worker_delivers(
    make_bridge: Callable[..., Bridge],
    store_target: dict[str, Any],
    fake_graph: FakeGraph,
    start_worker: Callable[[dict[str, Any]], subprocess.Popen[str]],
) -> None:
    app = make_bridge(delivery="worker", **store_target)
    ids = app.enqueue_many(make_event(i) for i in range(30))
    app.enqueue(make_event(30))
    assert not app.flush(0.3) and fake_graph.events == []  # nobody in the app sends
    assert app._dispatcher is not None and not app._dispatcher.delivers
    worker = start_worker(store_target)
    assert app.flush(30)  # the worker's deliveries settle the app's rows
    assert sorted(e["event_id"] for e in fake_graph.events) == sorted([*ids, "ev-30"])
    assert app.stats().delivered == 31 and app.stats().undelivered == 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_a_worker_stops_on_request_and_flushes(
    delivery_settings: Callable[..., Settings], fake_graph: FakeGraph
) -> None:
    stop = threading.Event()
    started = threading.Event()
    result: list[bool] = []
    settings = delivery_settings(delivery="worker")
    runner = threading.Thread(
        target=lambda: result.append(serve(settings, stop, lambda where: started.set()))
    )
    runner.start()
    assert started.wait(30)
    app = Bridge(settings)
    app.enqueue(make_event(1))
    assert app.flush(30) and [e["event_id"] for e in fake_graph.events] == ["ev-1"]
    stop.set()
    runner.join(30)
    assert result == [True]
    app.close(0)


def test_a_worker_with_bad_settings_says_which_and_exits_1(fake_graph: FakeGraph) -> None:
    env = worker_env(fake_graph, {})
    del env["CAPI_BRIDGE_ACCESS_TOKEN"]
    done = subprocess.run(
        [sys.executable, "-m", "capi_bridge.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "CAPI_BRIDGE_ACCESS_TOKEN" in done.stdout and "test-token" not in done.stdout


def test_delivery_is_a_known_mode() -> None:
    with pytest.raises(ConfigError, match="delivery"):
        Settings(pixel_id="1234567890", access_token="t", delivery="processes")
    assert Settings(pixel_id="1", access_token="t", delivery=" Worker ").delivery == "worker"


def test_an_app_process_closes_at_once_and_leaves_the_sending_to_the_worker(
    make_bridge: Callable[..., Bridge], fake_graph: FakeGraph
) -> None:
    """No worker runs: closing (as at interpreter exit) does not wait ``close_timeout`` for
    deliveries nobody in this process makes; the events stay in the outbox for the worker."""
    app = make_bridge(delivery="worker", close_timeout=600.0)
    app.enqueue(make_event(1))
    assert app.close() is True  # returns without waiting 600 s: nothing of ours is in memory
    assert fake_graph.events == [] and app.stats().undelivered == 1
