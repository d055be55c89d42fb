"""An outbox that cannot be written never breaks a page nor holds it: example-style Flask and
Starlette shops whose checkout calls ``track()`` answer with their redirect at once while the
SQLite outbox is read-only (immutable files: unwritable even for root) or locked by another
connection's write transaction, and the events taken meanwhile are delivered once it is back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import patch

import pytest
from helpers.stores import read_only
from helpers.web import BROWSER, SECRET

from capi_bridge.bridge import SUBMIT_WAIT, Bridge
from capi_bridge.delivery.sqlite_store import BUSY_TIMEOUT
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Another connection (a backup, a migration, another app) holds the write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


def flask_shop(settings: Settings, tracked: list[str]) -> tuple[Any, Bridge]:
    from flask import Flask, redirect

    from capi_bridge.flask import CapiBridge

    app = Flask(__name__)
    capi = CapiBridge(app, settings=settings)

    @app.post("/checkout")
    def checkout() -> Any:
        capi.identify(em="jane@example.com")
        tracked.append(capi.track("Purchase", custom_data={"value": 9.5, "currency": "EUR"}))
        return redirect("/thank-you", code=303)

    client = app.test_client()
    client.get("/checkout-warm-up", headers=BROWSER)
    return client, app.extensions["capi_bridge"].bridge


@contextlib.contextmanager
def starlette_shop(settings: Settings, tracked: list[str]) -> Iterator[tuple[Any, Bridge]]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from capi_bridge.asgi import CapiBridgeMiddleware
    from capi_bridge.pages import PageBridge
    from capi_bridge.starlette import identify, track

    async def checkout(request: Request) -> Response:
        identify(request, em="jane@example.com")
        tracked.append(
            await track(request, "Purchase", custom_data={"value": 9.5, "currency": "EUR"})
        )
        return RedirectResponse("/thank-you", status_code=303)

    core = PageBridge(settings)
    app = Starlette(
        routes=[Route("/checkout", checkout, methods=["POST"])],
        middleware=[Middleware(CapiBridgeMiddleware, core=core)],
    )
    with TestClient(app, follow_redirects=False) as client:
        yield client, core.bridge


Shop = Callable[[Settings, list[str]], Any]


@pytest.fixture(params=["flask", "starlette"])
def shop(
    request: pytest.FixtureRequest, fake_graph: FakeGraph, outbox_path: str
) -> Iterator[tuple[Any, Bridge, list[str]]]:
    settings = Settings(
        pixel_id="1234567890",
        access_token="test-token",
        graph_url=fake_graph.url,
        secret_key=SECRET,
        outbox_path=outbox_path,
        linger=0.02,
    )
    tracked: list[str] = []
    if request.param == "flask":
        client, bridge = flask_shop(settings, tracked)
        yield client, bridge, tracked
    else:
        with starlette_shop(settings, tracked) as (client, bridge):
            yield client, bridge, tracked
    bridge.close(timeout=0)


def checkout(client: Any) -> tuple[int, str]:
    reply = client.post("/checkout", headers=BROWSER)
    return reply.status_code, reply.headers.get("location", "")


@pytest.mark.parametrize("trouble", ["read-only", "locked"])
def test_checkout_redirects_at_once_and_its_purchase_arrives_later(
    shop: tuple[Any, Bridge, list[str]], fake_graph: FakeGraph, outbox_path: str, trouble: str
) -> None:
    client, bridge, tracked = shop
    assert checkout(client)[0] == 303 and bridge.flush(10)  # the outbox works: warm
    waits: list[float | None] = []
    store_append = bridge.outbox.append

    def append(*args: Any, **kwargs: Any) -> None:  # the real store, its waits noted
        waits.append(kwargs.get("wait"))
        store_append(*args, **kwargs)

    blocked = read_only(outbox_path) if trouble == "read-only" else locked(outbox_path)
    with blocked, patch.object(bridge.outbox, "append", append):
        status, location = checkout(client)
        assert (status, location.endswith("/thank-you")) == (303, True)
        # at once: the request waited for the store SUBMIT_WAIT at most, not BUSY_TIMEOUT
        assert waits[0] == SUBMIT_WAIT < BUSY_TIMEOUT
        # A failed disk takes the journal too: the row (one pixel) waits in memory. A lock
        # on the database does not stop the journal: the row is durable at once, and goes
        # into the outbox when the lock is let go.
        assert bridge.stats().buffered == (1 if trouble == "read-only" else 0)
        assert len(fake_graph.events) == 1  # only the warm-up's: it cannot be sent yet
    assert bridge.flush(10)  # the outbox is back: stored, then delivered
    assert {e["event_id"] for e in fake_graph.events} == set(tracked)
    stats = bridge.stats()
    assert (stats.buffered, stats.lost, stats.delivered) == (0, 0, 2)


def test_a_full_buffer_counts_what_it_loses_and_says_so_once(
    shop: tuple[Any, Bridge, list[str]],
    outbox_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, bridge, tracked = shop
    bridge._spilled.limit = 2  # a small buffer, so that it fills
    with read_only(outbox_path):
        replies = [checkout(client)[0] for _ in range(4)]
        assert replies == [303] * 4
        stats = bridge.stats()
        assert (stats.buffered, stats.lost) == (2, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    buffering = [w for w in warnings if "memory" in w]
    assert len(buffering) == 1 and "wait in this process's memory" in buffering[0]
    assert all("jane" not in w and tracked[0] not in w for w in warnings)  # counts only
    assert bridge.flush(10) and bridge.stats().buffered == 0
    assert os.path.exists(outbox_path)
